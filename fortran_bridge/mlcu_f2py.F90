!> Entry points of the Python extension mlcu_bridge_ext (built with f2py): the module's calls
!> with explicit-shape arrays and a status instead of a fatal stop, so that Python can drive
!> the Fortran code and turn errors into exceptions. fortran_bridge/pybridge.py wraps them.

subroutine mlcu_init(model_path, nthreads, device, nan_policy, ood_policy, kts, kte, status, errmsg)
   use module_cu_mlcu, only: cu_mlcu_init
   implicit none
   character(len=*), intent(in) :: model_path, device, nan_policy, ood_policy
   integer, intent(in) :: nthreads, kts, kte
   integer, intent(out) :: status
   character(len=2048), intent(out) :: errmsg

   errmsg = ' '
   call cu_mlcu_init(model_path, nthreads, device, nan_policy, ood_policy, kts, kte, status, errmsg)
end subroutine mlcu_init

subroutine mlcu_driver(ids, ide, jds, jde, kds, kde, ims, ime, jms, jme, kms, kme, &
                       its, ite, jts, jte, kts, kte, dt, dx, cudt, stepcu, &
                       u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, p_hyd, pi_phy, rho, &
                       dz8w, w0avg, hfx, ust, pblh, zol, xland, &
                       rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, &
                       rucuten, rvcuten, pratec, raincv, nca, cutop, cubot, &
                       cldfra_dp, cldfra_sh, qc_cu, qi_cu, fallback, status, errmsg)
   use module_cu_mlcu, only: cu_mlcu_driver
   implicit none
   integer, intent(in) :: ids, ide, jds, jde, kds, kde, ims, ime, jms, jme, kms, kme, &
                          its, ite, jts, jte, kts, kte, stepcu
   real, intent(in) :: dt, dx, cudt
   real, dimension(ims:ime, kms:kme, jms:jme), intent(in) :: &
      u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, p_hyd, pi_phy, rho, dz8w
   real, dimension(ims:ime, jms:jme), intent(in) :: hfx, ust, pblh, zol, xland
   real, dimension(ims:ime, kms:kme, jms:jme), intent(inout) :: w0avg, &
      rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, rucuten, rvcuten, &
      cldfra_dp, cldfra_sh, qc_cu, qi_cu
   real, dimension(ims:ime, jms:jme), intent(inout) :: pratec, raincv, nca, cutop, cubot
   integer, dimension(ims:ime, jms:jme), intent(inout) :: fallback
   integer, intent(out) :: status
   character(len=2048), intent(out) :: errmsg

   errmsg = ' '
   call cu_mlcu_driver(ids, ide, jds, jde, kds, kde, ims, ime, jms, jme, kms, kme, &
                       its, ite, jts, jte, kts, kte, dt, dx, cudt, stepcu, &
                       u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, p_hyd, pi_phy, rho, &
                       dz8w, w0avg, hfx, ust, pblh, zol, xland, &
                       rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, &
                       rucuten, rvcuten, pratec, raincv, nca, cutop, cubot, &
                       cldfra_dp, cldfra_sh, qc_cu, qi_cu, fallback, status, errmsg)
end subroutine mlcu_driver

subroutine mlcu_finalize(status, errmsg)
   use module_cu_mlcu, only: cu_mlcu_finalize
   implicit none
   integer, intent(out) :: status
   character(len=2048), intent(out) :: errmsg

   errmsg = ' '
   call cu_mlcu_finalize(status, errmsg)
end subroutine mlcu_finalize

subroutine mlcu_counter(name, total)
   use module_cu_mlcu, only: cu_mlcu_counter
   implicit none
   character(len=*), intent(in) :: name
   integer(kind=8), intent(out) :: total

   total = cu_mlcu_counter(name)
end subroutine mlcu_counter

subroutine mlcu_counters(text)
   use module_cu_mlcu, only: cu_mlcu_counters
   implicit none
   character(len=2048), intent(out) :: text

   text = cu_mlcu_counters()
end subroutine mlcu_counters
