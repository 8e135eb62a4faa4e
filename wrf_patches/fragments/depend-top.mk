module_wrf_top.o: ../phys/module_cu_mlcu_wrf.o

