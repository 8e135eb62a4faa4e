module_cu_mlcu_wrf.o: \
	module_cu_mskf.o \
	../frame/module_wrf_error.o \
	../share/module_model_constants.o

module_cumulus_driver.o: module_cu_mlcu_wrf.o

module_physics_init.o: module_cu_mlcu_wrf.o

