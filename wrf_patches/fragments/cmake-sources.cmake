                  module_cu_mlcu_wrf.F
