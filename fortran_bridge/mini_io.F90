!> netCDF input and output of the mini-driver.
!>
!> Reading plays the part of WRF's state and phy_prep: each rank reads the window of a wrfout
!> file that its patch memory covers (halo included, clipped to the domain; points outside the
!> domain stay zero) and forms the arrays the cumulus driver receives. Writing puts global
!> fields on wrfout's dimensions.
module mini_io
   use netcdf
   use mini_decomp, only: decomposition
   implicit none
   private

   public :: domain_info, open_input, read_inputs, read_state, create_output, put3, put2, &
             put2i, close_file, names3, names2, n_inputs3, n_inputs2, iw, it_phy, iw0avg, inca

   !> Arrays of the cumulus driver, in its argument order: the table index is the position in
   !> the mini-driver's a3 (ims:ime, kms:kme, jms:jme, :) and a2 (ims:ime, jms:jme, :) arrays.
   character(len=12), parameter :: names3(26) = [character(len=12) :: &
      'U_PHY', 'V_PHY', 'W', 'T_PHY', 'QVAPOR', 'QCLOUD', 'QRAIN', 'QICE', 'QSNOW', 'P_HYD', &
      'PI_PHY', 'RHO', 'DZ8W', 'W0AVG', 'RTHCUTEN', 'RQVCUTEN', 'RQCCUTEN', 'RQRCUTEN', &
      'RQICUTEN', 'RQSCUTEN', 'RUCUTEN', 'RVCUTEN', 'CLDFRA_DP', 'CLDFRA_SH', 'QC_CU', 'QI_CU']
   character(len=12), parameter :: names2(10) = [character(len=12) :: &
      'HFX', 'UST', 'PBLH', 'ZOL', 'XLAND', 'PRATEC', 'RAINCV', 'NCA', 'CUTOP', 'CUBOT']
   integer, parameter :: n_inputs3 = 14, n_inputs2 = 5   !! the leading entries are inputs
   integer, parameter :: iu = 1, iv = 2, iw = 3, it_phy = 4, iqv = 5, iphyd = 10, ipi = 11, &
                         irho = 12, idz = 13, iw0avg = 14, ihfx = 1, iust = 2, izol = 4, inca = 8

   ! WRF's constants (share/module_model_constants.F values).
   real, parameter :: r_d = 287., r_v = 461.6, cp = 7.*r_d/2., cv = cp - r_d, g = 9.81, &
                      p1000mb = 1.e5, t0 = 300., karman = 0.4

   type :: domain_info
      integer :: nx, ny, nz_file     !! mass columns and levels in the file
      real :: dx, dt, cudt
      integer :: stepcu
   end type domain_info

contains

   subroutine check(status, what)
      integer, intent(in) :: status
      character(len=*), intent(in) :: what
      external :: mlcu_fatal

      if (status /= nf90_noerr) call mlcu_fatal(what//': '//trim(nf90_strerror(status)))
   end subroutine check

   subroutine open_input(path, ncid, info)
      character(len=*), intent(in) :: path
      integer, intent(out) :: ncid
      type(domain_info), intent(out) :: info

      call check(nf90_open(path, nf90_nowrite, ncid), path)
      info%nx = dim_len(ncid, 'west_east', path)
      info%ny = dim_len(ncid, 'south_north', path)
      info%nz_file = dim_len(ncid, 'bottom_top', path)
      call check(nf90_get_att(ncid, nf90_global, 'DX', info%dx), path//': global attribute DX')
      call check(nf90_get_att(ncid, nf90_global, 'DT', info%dt), path//': global attribute DT')
      if (nf90_get_att(ncid, nf90_global, 'CUDT', info%cudt) /= nf90_noerr) info%cudt = 0.
      if (nf90_get_att(ncid, nf90_global, 'STEPCU', info%stepcu) /= nf90_noerr) &
         info%stepcu = max(1, nint(info%cudt*60./info%dt))
   end subroutine open_input

   integer function dim_len(ncid, name, path)
      integer, intent(in) :: ncid
      character(len=*), intent(in) :: name, path
      integer :: dimid

      call check(nf90_inq_dimid(ncid, name, dimid), path//': dimension '//name)
      call check(nf90_inquire_dimension(ncid, dimid, len=dim_len), path//': dimension '//name)
   end function dim_len

   !> Field `name` over global points i0..i1, j0..j1 and levels 1..nk of the first time, in the
   !> file's order (i, j, k); .false. when the file lacks it.
   logical function read_window(ncid, name, i0, i1, j0, j1, nk, buf) result(found)
      integer, intent(in) :: ncid, i0, i1, j0, j1, nk
      character(len=*), intent(in) :: name
      real, intent(out) :: buf(i0:i1, j0:j1, nk)
      integer :: varid, ndims

      found = nf90_inq_varid(ncid, name, varid) == nf90_noerr
      if (.not. found) return
      call check(nf90_inquire_variable(ncid, varid, ndims=ndims), name)
      if (ndims == 4) then
         call check(nf90_get_var(ncid, varid, buf, start=[i0, j0, 1, 1], &
                                 count=[i1 - i0 + 1, j1 - j0 + 1, nk, 1]), name)
      else
         call check(nf90_get_var(ncid, varid, buf, start=[i0, j0, 1], &
                                 count=[i1 - i0 + 1, j1 - j0 + 1, 1]), name)
      end if
   end function read_window

   subroutine require(found, name)
      logical, intent(in) :: found
      character(len=*), intent(in) :: name
      external :: mlcu_fatal

      if (.not. found) call mlcu_fatal('input file has no variable '//name)
   end subroutine require

   !> The cumulus driver's inputs on this rank's memory, for the lowest nz mass levels. Missing
   !> fields fall back as WRF's phy_prep would form them: P_HYD = P + PB, PI_PHY from P + PB,
   !> RHO from the equation of state, ZOL from the surface fluxes, hydrometeors and W0AVG zero.
   subroutine read_inputs(ncid, info, d, nz, a3, a2)
      integer, intent(in) :: ncid, nz
      type(domain_info), intent(in) :: info
      type(decomposition), intent(in) :: d
      real, intent(inout) :: a3(d%ims:, d%kms:, d%jms:, :), a2(d%ims:, d%jms:, :)
      real, allocatable :: f(:, :, :), p(:, :, :), th(:, :, :), z(:, :, :), s(:, :, :)
      integer :: i0, i1, j0, j1, n, k
      logical :: ok

      i0 = max(d%ims, 1); i1 = min(d%ime, info%nx)
      j0 = max(d%jms, 1); j1 = min(d%jme, info%ny)
      allocate (f(i0:i1, j0:j1, nz), p(i0:i1, j0:j1, nz), th(i0:i1, j0:j1, nz), &
                z(i0:i1, j0:j1, nz + 1))

      call require(read_window(ncid, 'P', i0, i1, j0, j1, nz, p), 'P')
      call require(read_window(ncid, 'PB', i0, i1, j0, j1, nz, f), 'PB')
      p = p + f
      call require(read_window(ncid, 'T', i0, i1, j0, j1, nz, th), 'T')
      th = th + t0

      do n = iqv, iqv + 4
         ok = read_window(ncid, trim(names3(n)), i0, i1, j0, j1, nz, f)
         if (n == iqv) call require(ok, 'QVAPOR')
         if (.not. ok) f = 0.
         call place(n, f)
      end do
      if (.not. read_window(ncid, 'P_HYD', i0, i1, j0, j1, nz, f)) f = p
      call place(iphyd, f)
      if (.not. read_window(ncid, 'PI_PHY', i0, i1, j0, j1, nz, f)) f = (p/p1000mb)**(r_d/cp)
      call place(ipi, f)
      f = th*f
      call place(it_phy, f)
      if (.not. read_window(ncid, 'RHO', i0, i1, j0, j1, nz, f)) then
         f = (1. + mass(iqv))/((r_d/p1000mb)*th*(1. + r_v/r_d*mass(iqv))*(p/p1000mb)**(-cv/cp))
      end if
      call place(irho, f)
      if (.not. read_window(ncid, 'W0AVG', i0, i1, j0, j1, nz, f)) f = 0.
      call place(iw0avg, f)

      ! Heights of full levels from the geopotential, then layer thickness.
      call require(read_window(ncid, 'PH', i0, i1, j0, j1, nz + 1, z), 'PH')
      allocate (s(i0:i1, j0:j1, nz + 1))
      call require(read_window(ncid, 'PHB', i0, i1, j0, j1, nz + 1, s), 'PHB')
      z = (z + s)/g
      f = z(:, :, 2:nz + 1) - z(:, :, 1:nz)
      call place(idz, f)
      call require(read_window(ncid, 'W', i0, i1, j0, j1, nz + 1, s), 'W')
      do k = 1, nz + 1
         a3(i0:i1, k, j0:j1, iw) = s(:, :, k)
      end do
      deallocate (s)

      ! Winds at mass points from the staggered faces, as phy_prep averages them.
      allocate (s(i0:i1 + 1, j0:j1, nz))
      call require(read_window(ncid, 'U', i0, i1 + 1, j0, j1, nz, s), 'U')
      f = 0.5*(s(i0:i1, :, :) + s(i0 + 1:i1 + 1, :, :))
      call place(iu, f)
      deallocate (s)
      allocate (s(i0:i1, j0:j1 + 1, nz))
      call require(read_window(ncid, 'V', i0, i1, j0, j1 + 1, nz, s), 'V')
      f = 0.5*(s(:, j0:j1, :) + s(:, j0 + 1:j1 + 1, :))
      call place(iv, f)
      deallocate (s)

      do n = 1, n_inputs2
         if (n == izol) cycle
         ok = read_window(ncid, trim(names2(n)), i0, i1, j0, j1, 1, f(:, :, 1:1))
         call require(ok, trim(names2(n)))
         a2(i0:i1, j0:j1, n) = f(:, :, 1)
      end do
      if (read_window(ncid, 'ZOL', i0, i1, j0, j1, 1, f(:, :, 1:1))) then
         a2(i0:i1, j0:j1, izol) = f(:, :, 1)
      else
         ! z/L at the first mass level from HFX and UST (emulator.derive.obukhov_zol).
         a2(i0:i1, j0:j1, izol) = max(-10., min(2., -karman*g*a2(i0:i1, j0:j1, ihfx) &
            *0.5*(z(:, :, 2) - z(:, :, 1)) &
            /(max(a2(i0:i1, j0:j1, iust), 0.01)**3*th(:, :, 1)*(1. + 0.608*mass1(iqv)) &
              *a3(i0:i1, 1, j0:j1, irho)*cp)))
      end if

   contains

      subroutine place(n, x)
         integer, intent(in) :: n
         real, intent(in) :: x(i0:, j0:, :)
         integer :: kk

         do kk = 1, nz
            a3(i0:i1, kk, j0:j1, n) = x(:, :, kk)
         end do
      end subroutine place

      function mass(n) result(x)
         integer, intent(in) :: n
         real :: x(i0:i1, j0:j1, nz)
         integer :: kk

         do kk = 1, nz
            x(:, :, kk) = a3(i0:i1, kk, j0:j1, n)
         end do
      end function mass

      function mass1(n) result(x)
         integer, intent(in) :: n
         real :: x(i0:i1, j0:j1)

         x = a3(i0:i1, 1, j0:j1, n)
      end function mass1

   end subroutine read_inputs

   !> Restart-like start: NCA and the cumulus outputs of the file (those present), so that
   !> columns held by NCA keep them.
   subroutine read_state(ncid, info, d, nz, a3, a2)
      integer, intent(in) :: ncid, nz
      type(domain_info), intent(in) :: info
      type(decomposition), intent(in) :: d
      real, intent(inout) :: a3(d%ims:, d%kms:, d%jms:, :), a2(d%ims:, d%jms:, :)
      real, allocatable :: f(:, :, :)
      integer :: i0, i1, j0, j1, n, k

      i0 = max(d%ims, 1); i1 = min(d%ime, info%nx)
      j0 = max(d%jms, 1); j1 = min(d%jme, info%ny)
      allocate (f(i0:i1, j0:j1, nz))
      do n = n_inputs3 + 1, size(names3)
         if (read_window(ncid, trim(names3(n)), i0, i1, j0, j1, nz, f)) then
            do k = 1, nz
               a3(i0:i1, k, j0:j1, n) = f(:, :, k)
            end do
         end if
      end do
      do n = n_inputs2 + 1, size(names2)
         if (read_window(ncid, trim(names2(n)), i0, i1, j0, j1, 1, f(:, :, 1:1))) &
            a2(i0:i1, j0:j1, n) = f(:, :, 1)
      end do
   end subroutine read_state

   !> A new file with wrfout's dimensions and the run's settings as global attributes.
   subroutine create_output(path, info, nz, title, ranks, tiles, ncid)
      character(len=*), intent(in) :: path, title
      type(domain_info), intent(in) :: info
      integer, intent(in) :: nz, ranks, tiles
      integer, intent(out) :: ncid
      integer :: dimid, varid

      call check(nf90_create(path, ior(nf90_clobber, nf90_netcdf4), ncid), path)
      call check(nf90_def_dim(ncid, 'Time', nf90_unlimited, dimid), path)
      call check(nf90_def_dim(ncid, 'DateStrLen', 19, dimid), path)
      call check(nf90_def_dim(ncid, 'west_east', info%nx, dimid), path)
      call check(nf90_def_dim(ncid, 'south_north', info%ny, dimid), path)
      call check(nf90_def_dim(ncid, 'bottom_top', nz, dimid), path)
      call check(nf90_def_dim(ncid, 'bottom_top_stag', nz + 1, dimid), path)
      call check(nf90_def_var(ncid, 'Times', nf90_char, [2, 1], varid), path)
      call check(nf90_put_att(ncid, nf90_global, 'TITLE', title), path)
      call check(nf90_put_att(ncid, nf90_global, 'DX', info%dx), path)
      call check(nf90_put_att(ncid, nf90_global, 'DT', info%dt), path)
      call check(nf90_put_att(ncid, nf90_global, 'CUDT', info%cudt), path)
      call check(nf90_put_att(ncid, nf90_global, 'STEPCU', info%stepcu), path)
      call check(nf90_put_att(ncid, nf90_global, 'MLCU_RANKS', ranks), path)
      call check(nf90_put_att(ncid, nf90_global, 'MLCU_TILES_PER_RANK', tiles), path)
      call check(nf90_enddef(ncid), path)
      call check(nf90_put_var(ncid, varid, ['0001-01-01_00:00:00']), path)
   end subroutine create_output

   !> A global 3-D field g(i, k, j) written as (Time, bottom_top[_stag], south_north, west_east).
   subroutine put3(ncid, name, g)
      integer, intent(in) :: ncid
      character(len=*), intent(in) :: name
      real, intent(in) :: g(:, :, :)
      integer :: varid, k, dims(4)
      character(len=16) :: zdim

      zdim = 'bottom_top'
      if (name == 'W') zdim = 'bottom_top_stag'
      dims = [dim_id(ncid, 'west_east'), dim_id(ncid, 'south_north'), dim_id(ncid, trim(zdim)), &
              dim_id(ncid, 'Time')]
      call check(nf90_redef(ncid), name)
      call check(nf90_def_var(ncid, name, nf90_float, dims, varid), name)
      call check(nf90_put_att(ncid, varid, 'MemoryOrder', 'XYZ'), name)
      call check(nf90_enddef(ncid), name)
      do k = 1, size(g, 2)
         call check(nf90_put_var(ncid, varid, g(:, k, :), start=[1, 1, k, 1], &
                                 count=[size(g, 1), size(g, 3), 1, 1]), name)
      end do
   end subroutine put3

   subroutine put2(ncid, name, g)
      integer, intent(in) :: ncid
      character(len=*), intent(in) :: name
      real, intent(in) :: g(:, :)
      integer :: varid

      call check(nf90_redef(ncid), name)
      call check(nf90_def_var(ncid, name, nf90_float, &
                              [dim_id(ncid, 'west_east'), dim_id(ncid, 'south_north'), dim_id(ncid, 'Time')], &
                              varid), name)
      call check(nf90_put_att(ncid, varid, 'MemoryOrder', 'XY '), name)
      call check(nf90_enddef(ncid), name)
      call check(nf90_put_var(ncid, varid, g, start=[1, 1, 1], count=[size(g, 1), size(g, 2), 1]), name)
   end subroutine put2

   subroutine put2i(ncid, name, g)
      integer, intent(in) :: ncid
      character(len=*), intent(in) :: name
      integer, intent(in) :: g(:, :)
      integer :: varid

      call check(nf90_redef(ncid), name)
      call check(nf90_def_var(ncid, name, nf90_int, &
                              [dim_id(ncid, 'west_east'), dim_id(ncid, 'south_north'), dim_id(ncid, 'Time')], &
                              varid), name)
      call check(nf90_enddef(ncid), name)
      call check(nf90_put_var(ncid, varid, g, start=[1, 1, 1], count=[size(g, 1), size(g, 2), 1]), name)
   end subroutine put2i

   integer function dim_id(ncid, name)
      integer, intent(in) :: ncid
      character(len=*), intent(in) :: name

      call check(nf90_inq_dimid(ncid, name, dim_id), name)
   end function dim_id

   subroutine close_file(ncid)
      integer, intent(in) :: ncid

      call check(nf90_close(ncid), 'closing a netCDF file')
   end subroutine close_file

end module mini_io
