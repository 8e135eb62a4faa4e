MODULES += module_cu_mlcu_wrf.o
