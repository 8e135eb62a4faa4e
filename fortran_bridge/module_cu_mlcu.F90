!> Machine-learned replacement of the MSKF cumulus scheme, shaped like a WRF cumulus module.
!>
!> The column physics lives in the Python runtime (emulator/runtime.py); this module hands it
!> WRF's arrays in place through the C shim (mlcu_shim.c). It uses no WRF module: errors go to
!> the external routine mlcu_fatal, which WRF provides through wrf_error_fatal and stand-alone
!> programs take from mlcu_fatal_standalone.F90.
!>
!> Arrays follow WRF: 3-D (ims:ime, kms:kme, jms:jme), 2-D (ims:ime, jms:jme); the runtime
!> computes the tile its..ite, jts..jte on mass levels kts..kte (kte = kde - 1).
module module_cu_mlcu
   use, intrinsic :: iso_c_binding, only: c_char, c_float, c_int, c_int32_t, c_int64_t, &
                                          c_ptr, c_loc, c_null_char
   implicit none
   private

   public :: cu_mlcu_init, cu_mlcu_driver, cu_mlcu_finalize, cu_mlcu_counter, cu_mlcu_counters

   integer, parameter :: name_len = 16       !! MLCU_NAME_LEN in mlcu_shim.h
   integer, parameter :: message_len = 2048  !! room for a Python error message
   integer(c_int32_t), parameter :: mlcu_real32 = 1, mlcu_int32 = 2

   !> One WRF array as the shim sees it (mlcu_array_t in mlcu_shim.h).
   type, bind(c) :: mlcu_array_t
      character(kind=c_char) :: name(name_len)  !! upper-case WRF name, NUL-terminated
      type(c_ptr) :: data                        !! address of element (ims, kms, jms)
      integer(c_int32_t) :: dtype                !! mlcu_real32 or mlcu_int32
      integer(c_int32_t) :: rank                 !! 2 or 3
      integer(c_int64_t) :: extent(3)            !! memory extents
   end type mlcu_array_t

   interface
      !> Report an error and stop the model; provided by WRF (wrf_error_fatal) or by
      !> mlcu_fatal_standalone.F90. Should it return, the caller returns at once.
      subroutine mlcu_fatal(message)
         character(len=*), intent(in) :: message
      end subroutine mlcu_fatal
   end interface

contains

   !> Load the model once per process (MPI rank). Further calls with the same settings (WRF
   !> initialises physics per domain) do nothing; other settings are an error.
   subroutine cu_mlcu_init(model_path, nthreads, device, nan_policy, ood_policy, kts, kte, &
                           status, errmsg)
      character(len=*), intent(in) :: model_path  !! exported model (.onnx)
      integer, intent(in) :: nthreads             !! inference threads per rank
      character(len=*), intent(in) :: device      !! auto | cpu | cuda
      character(len=*), intent(in) :: nan_policy  !! fatal | zero
      character(len=*), intent(in) :: ood_policy  !! predict | zero | fallback
      integer, intent(in) :: kts, kte             !! mass levels of the model grid
      integer, intent(out), optional :: status    !! when present: 0 or an error, not fatal
      character(len=*), intent(out), optional :: errmsg

      interface
         function mlcu_shim_init(model_path, nthreads, device, nan_policy, ood_policy, &
                                 n_levels, message, message_len) bind(c, name='mlcu_shim_init')
            import :: c_char, c_int, c_int32_t
            character(kind=c_char), dimension(*), intent(in) :: model_path, device, &
                                                                nan_policy, ood_policy
            integer(c_int32_t), value :: nthreads, n_levels, message_len
            character(kind=c_char), dimension(*), intent(out) :: message
            integer(c_int) :: mlcu_shim_init
         end function mlcu_shim_init
      end interface

      character(kind=c_char) :: message(message_len)

      if (present(status)) status = 0
      if (mlcu_shim_init(c_string(model_path), int(nthreads, c_int32_t), c_string(device), &
                         c_string(nan_policy), c_string(ood_policy), int(kte - kts + 1, c_int32_t), &
                         message, int(message_len, c_int32_t)) /= 0) then
         call fail('cu_mlcu_init: '//f_string(message), status, errmsg)
      end if
   end subroutine cu_mlcu_init

   !> One cumulus call on one tile. The runtime updates W0AVG, leaves columns held by NCA
   !> untouched, and writes tendencies, precipitation, NCA, cloud top/base and the cloud fields
   !> of the other columns. FALLBACK is set to 1 where the runtime asks for the physics scheme.
   subroutine cu_mlcu_driver(ids, ide, jds, jde, kds, kde, ims, ime, jms, jme, kms, kme, &
                             its, ite, jts, jte, kts, kte, dt, dx, cudt, stepcu, &
                             u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, p_hyd, pi_phy, rho, &
                             dz8w, w0avg, hfx, ust, pblh, zol, xland, &
                             rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, &
                             rucuten, rvcuten, pratec, raincv, nca, cutop, cubot, &
                             cldfra_dp, cldfra_sh, qc_cu, qi_cu, fallback, status, errmsg)
      integer, intent(in) :: ids, ide, jds, jde, kds, kde, ims, ime, jms, jme, kms, kme, &
                             its, ite, jts, jte, kts, kte
      real(c_float), intent(in) :: dt    !! model time step, s
      real(c_float), intent(in) :: dx    !! grid spacing, m
      real(c_float), intent(in) :: cudt  !! minutes between cumulus calls
      integer, intent(in) :: stepcu      !! model steps between cumulus calls
      real(c_float), dimension(ims:ime, kms:kme, jms:jme), intent(in), target :: &
         u_phy, v_phy, w, t_phy, qv, qc, qr, qi, qs, p_hyd, pi_phy, rho, dz8w
      real(c_float), dimension(ims:ime, jms:jme), intent(in), target :: hfx, ust, pblh, zol, xland
      real(c_float), dimension(ims:ime, kms:kme, jms:jme), intent(inout), target :: w0avg
      real(c_float), dimension(ims:ime, jms:jme), intent(inout), target :: nca
      real(c_float), dimension(ims:ime, kms:kme, jms:jme), intent(inout), target :: &
         rthcuten, rqvcuten, rqccuten, rqrcuten, rqicuten, rqscuten, rucuten, rvcuten, &
         cldfra_dp, cldfra_sh, qc_cu, qi_cu
      real(c_float), dimension(ims:ime, jms:jme), intent(inout), target :: &
         pratec, raincv, cutop, cubot
      integer(c_int32_t), dimension(ims:ime, jms:jme), intent(inout), target :: fallback
      integer, intent(out), optional :: status
      character(len=*), intent(out), optional :: errmsg

      interface
         function mlcu_shim_run_tile(arrays, n_arrays, bounds, dt, dx, cudt, stepcu, &
                                     message, message_len) bind(c, name='mlcu_shim_run_tile')
            import :: mlcu_array_t, c_char, c_float, c_int, c_int32_t
            type(mlcu_array_t), dimension(*), intent(in) :: arrays
            integer(c_int32_t), value :: n_arrays, stepcu, message_len
            integer(c_int32_t), dimension(18), intent(in) :: bounds
            real(c_float), value :: dt, dx, cudt
            character(kind=c_char), dimension(*), intent(out) :: message
            integer(c_int) :: mlcu_shim_run_tile
         end function mlcu_shim_run_tile
      end interface

      integer, parameter :: max_arrays = 48
      type(mlcu_array_t) :: arrays(max_arrays)
      character(kind=c_char) :: message(message_len)
      character(len=64) :: tile
      integer(c_int64_t) :: e3(3), e2(3)
      integer :: n

      if (present(status)) status = 0
      e3 = [int(ime - ims + 1, c_int64_t), int(kme - kms + 1, c_int64_t), int(jme - jms + 1, c_int64_t)]
      e2 = [int(ime - ims + 1, c_int64_t), int(jme - jms + 1, c_int64_t), 1_c_int64_t]
      n = 0
      ! The names are the runtime's (WRF Registry) names; the shim passes them on unchanged.
      call add('U_PHY', c_loc(u_phy), 3, e3)
      call add('V_PHY', c_loc(v_phy), 3, e3)
      call add('W', c_loc(w), 3, e3)
      call add('T_PHY', c_loc(t_phy), 3, e3)
      call add('QVAPOR', c_loc(qv), 3, e3)
      call add('QCLOUD', c_loc(qc), 3, e3)
      call add('QRAIN', c_loc(qr), 3, e3)
      call add('QICE', c_loc(qi), 3, e3)
      call add('QSNOW', c_loc(qs), 3, e3)
      call add('P_HYD', c_loc(p_hyd), 3, e3)
      call add('PI_PHY', c_loc(pi_phy), 3, e3)
      call add('RHO', c_loc(rho), 3, e3)
      call add('DZ8W', c_loc(dz8w), 3, e3)
      call add('W0AVG', c_loc(w0avg), 3, e3)
      call add('HFX', c_loc(hfx), 2, e2)
      call add('UST', c_loc(ust), 2, e2)
      call add('PBLH', c_loc(pblh), 2, e2)
      call add('ZOL', c_loc(zol), 2, e2)
      call add('XLAND', c_loc(xland), 2, e2)
      call add('RTHCUTEN', c_loc(rthcuten), 3, e3)
      call add('RQVCUTEN', c_loc(rqvcuten), 3, e3)
      call add('RQCCUTEN', c_loc(rqccuten), 3, e3)
      call add('RQRCUTEN', c_loc(rqrcuten), 3, e3)
      call add('RQICUTEN', c_loc(rqicuten), 3, e3)
      call add('RQSCUTEN', c_loc(rqscuten), 3, e3)
      call add('RUCUTEN', c_loc(rucuten), 3, e3)
      call add('RVCUTEN', c_loc(rvcuten), 3, e3)
      call add('PRATEC', c_loc(pratec), 2, e2)
      call add('RAINCV', c_loc(raincv), 2, e2)
      call add('NCA', c_loc(nca), 2, e2)
      call add('CUTOP', c_loc(cutop), 2, e2)
      call add('CUBOT', c_loc(cubot), 2, e2)
      call add('CLDFRA_DP', c_loc(cldfra_dp), 3, e3)
      call add('CLDFRA_SH', c_loc(cldfra_sh), 3, e3)
      call add('QC_CU', c_loc(qc_cu), 3, e3)
      call add('QI_CU', c_loc(qi_cu), 3, e3)
      call add('FALLBACK', c_loc(fallback), 2, e2, mlcu_int32)

      if (mlcu_shim_run_tile(arrays, int(n, c_int32_t), &
                             int([ids, ide, jds, jde, kds, kde, ims, ime, jms, jme, kms, kme, &
                                  its, ite, jts, jte, kts, kte], c_int32_t), &
                             dt, dx, cudt, int(stepcu, c_int32_t), message, &
                             int(message_len, c_int32_t)) /= 0) then
         write (tile, '(a,i0,a,i0,a,i0,a,i0,a)') ' (tile i=', its, '..', ite, ', j=', jts, '..', jte, ')'
         call fail('cu_mlcu_driver: '//f_string(message)//trim(tile), status, errmsg)
      end if

   contains

      subroutine add(name, data, rank, extent, dtype)
         character(len=*), intent(in) :: name
         type(c_ptr), intent(in) :: data
         integer, intent(in) :: rank
         integer(c_int64_t), intent(in) :: extent(3)
         integer(c_int32_t), intent(in), optional :: dtype
         integer :: i

         n = n + 1
         arrays(n)%name = c_null_char
         do i = 1, len(name)
            arrays(n)%name(i) = name(i:i)
         end do
         arrays(n)%data = data
         arrays(n)%rank = int(rank, c_int32_t)
         arrays(n)%extent = extent
         arrays(n)%dtype = mlcu_real32
         if (present(dtype)) arrays(n)%dtype = dtype
      end subroutine add

   end subroutine cu_mlcu_driver

   !> Release the runtime (and the interpreter, when this program started it).
   subroutine cu_mlcu_finalize(status, errmsg)
      integer, intent(out), optional :: status
      character(len=*), intent(out), optional :: errmsg

      interface
         function mlcu_shim_finalize(message, message_len) bind(c, name='mlcu_shim_finalize')
            import :: c_char, c_int, c_int32_t
            character(kind=c_char), dimension(*), intent(out) :: message
            integer(c_int32_t), value :: message_len
            integer(c_int) :: mlcu_shim_finalize
         end function mlcu_shim_finalize
      end interface

      character(kind=c_char) :: message(message_len)

      if (present(status)) status = 0
      if (mlcu_shim_finalize(message, int(message_len, c_int32_t)) /= 0) then
         call fail('cu_mlcu_finalize: '//f_string(message), status, errmsg)
      end if
   end subroutine cu_mlcu_finalize

   !> Sum over this process's calls of a runtime counter ("evaluated", "triggered", "nan",
   !> "ood", "fallback", ...); 0 when the runtime never reported it.
   function cu_mlcu_counter(name) result(total)
      character(len=*), intent(in) :: name
      integer(c_int64_t) :: total

      interface
         function mlcu_shim_counter(name) bind(c, name='mlcu_shim_counter')
            import :: c_char, c_int64_t
            character(kind=c_char), dimension(*), intent(in) :: name
            integer(c_int64_t) :: mlcu_shim_counter
         end function mlcu_shim_counter
      end interface

      total = mlcu_shim_counter(c_string(name))
   end function cu_mlcu_counter

   !> Every counter of the runtime, summed over this process's calls, as one line
   !> "name=value name=value ..." (empty before the first call), for a log line that
   !> follows whatever counters the runtime reports.
   function cu_mlcu_counters() result(text)
      character(len=:), allocatable :: text

      interface
         function mlcu_shim_counters(text, text_len) bind(c, name='mlcu_shim_counters')
            import :: c_char, c_int, c_int32_t
            character(kind=c_char), dimension(*), intent(out) :: text
            integer(c_int32_t), value :: text_len
            integer(c_int) :: mlcu_shim_counters
         end function mlcu_shim_counters
      end interface

      character(kind=c_char) :: line(message_len)

      if (mlcu_shim_counters(line, int(message_len, c_int32_t)) /= 0) then
         text = f_string(line)//' (cut)'
      else
         text = f_string(line)
      end if
   end function cu_mlcu_counters

   !> Hand an error to the caller when it asked for a status, else to mlcu_fatal.
   subroutine fail(message, status, errmsg)
      character(len=*), intent(in) :: message
      integer, intent(out), optional :: status
      character(len=*), intent(out), optional :: errmsg

      if (present(status)) then
         status = 1
         if (present(errmsg)) errmsg = message
      else
         call mlcu_fatal(message)
      end if
   end subroutine fail

   function c_string(text) result(s)
      character(len=*), intent(in) :: text
      character(kind=c_char, len=len_trim(text) + 1) :: s

      s = trim(text)//c_null_char
   end function c_string

   function f_string(s) result(text)
      character(kind=c_char), dimension(:), intent(in) :: s
      character(len=:), allocatable :: text
      integer :: i, n

      n = size(s)
      do i = 1, size(s)
         if (s(i) == c_null_char) then
            n = i - 1
            exit
         end if
      end do
      allocate (character(len=n) :: text)
      do i = 1, n
         text(i:i) = s(i)
      end do
   end function f_string

end module module_cu_mlcu
