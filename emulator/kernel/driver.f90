!> The kernel's driver. For each column: the environment, the candidate source layers and
!! the trigger; the search for a cloud (Kain 2004: going up, the first source layer that
!! triggers and makes a deep cloud; failing that, the one of the triggering layers that
!! makes the deepest valid cloud, a shallow one); then the chosen cloud's updraft with its
!! taper, precipitation efficiency, time scales, downdraft and initial tendencies. Each stage
!! works on the packed columns that need it.
module kernel_driver
  use kernel_constants
  use kernel_math, only: klog
  use kernel_environment
  use kernel_source
  use kernel_updraft
  use kernel_cloud
  use kernel_scales
  use kernel_downdraft
  use kernel_tendency
  implicit none
  private
  public :: run_columns

  ! The output layout (emulator/updraft.py LEVEL_FIELDS and COLUMN_FIELDS)
  integer, parameter, public :: n_level_fields = 15, n_column_fields = 18
  integer, parameter :: f_mass = 1, f_ent = 2, f_det = 3, f_buoy = 4, f_cond = 5, f_rain = 6, &
                        f_vel = 7, f_cloud = 8, f_dmass = 9, f_dent = 10, f_ddet = 11, f_heat = 12, &
                        f_moist = 13, f_liq = 14, f_ice = 15
  integer, parameter :: c_kind = 1, c_lcl = 2, c_top = 3, c_etl = 4, c_src = 5, c_zlcl = 6, &
                        c_depth = 7, c_mindepth = 8, c_cape = 9, c_timec = 10, c_tadv = 11, &
                        c_vsub = 12, c_pef = 13, c_srcdepth = 14, c_dsrc = 15, c_dbase = 16, &
                        c_rain = 17, c_evap = 18
  ! columns per block
  integer, parameter :: block = 128

contains

  subroutine run_columns(n, nz, t, q, p, rho, dz, w0, u, v, hfx, ust, pblh, zol, dx, lev, col)
    integer, intent(in) :: n, nz
    real(rk), intent(in), dimension(n, nz) :: t, q, p, rho, dz, w0, u, v
    real(rk), intent(in), dimension(n) :: hfx, ust, pblh, zol, dx
    real(rk), intent(out) :: lev(n, n_level_fields, nz), col(n, n_column_fields)
    integer :: i0, i1
    ! blocks of columns keep the working arrays small (in cache, reused)
    do i0 = 1, n, block
      i1 = min(i0 + block - 1, n)
      call run_block(n, nz, i0, i1, t, q, p, rho, dz, w0, u, v, hfx, ust, zol, dx, lev, col)
    end do
  end subroutine

  !> The kernel on the columns i0..i1.
  subroutine run_block(n, nz, i0, i1, t, q, p, rho, dz, w0, u, v, hfx, ust, zol, dx, lev, col)
    integer, intent(in) :: n, nz, i0, i1
    real(rk), intent(in), dimension(n, nz) :: t, q, p, rho, dz, w0, u, v
    real(rk), intent(in), dimension(n) :: hfx, ust, zol, dx
    real(rk), intent(inout) :: lev(n, n_level_fields, nz), col(n, n_column_fields)
    type(environment) :: env
    type(candidates) :: cand
    integer, allocatable :: kind(:), chosen(:)
    real(rk), allocatable :: sf(:)
    integer :: nb, i
    nb = i1 - i0 + 1
    call make_environment(nb, nz, t(i0:i1, :), q(i0:i1, :), p(i0:i1, :), rho(i0:i1, :), dz(i0:i1, :), &
                          w0(i0:i1, :), u(i0:i1, :), v(i0:i1, :), env)
    call find_candidates(env, dx(i0:i1), cand)
    allocate(kind(nb), chosen(nb), sf(nb))
    do i = 1, nb
      ! MSKF's scale factor (Zheng et al. 2016): 1 + ln(25 km / DX), at least 1
      sf(i) = max(1.0, 1.0 + klog(25000.0 / dx(i0 + i - 1)))
    end do
    call search(env, cand, sf, dx(i0:i1), kind, chosen)
    call cloud_columns(env, cand, sf, dx(i0:i1), hfx(i0:i1), ust(i0:i1), zol(i0:i1), kind, chosen, &
                       lev(i0:i1, :, :), col(i0:i1, :))
  end subroutine

  !> Which candidate each column convects from (chosen) and how (kind: 0 none, 1 shallow,
  !! 2 deep). Each round lifts, in every column still searching, its next candidate that
  !! triggers.
  subroutine search(env, cand, sf, dx, kind, chosen)
    type(environment), intent(in) :: env
    type(candidates), intent(in) :: cand
    real(rk), intent(in) :: sf(:), dx(:)
    integer, intent(out) :: kind(:), chosen(:)
    type(source_layer) :: src
    type(plume) :: pl
    integer, allocatable :: pos(:), shallow(:), idx(:), which(:)
    logical, allocatable :: searching(:), is_deep(:)
    real(rk), allocatable :: best(:), psf(:), pdx(:)
    integer :: n, i, j, m, c
    n = env%n
    allocate(pos(n), shallow(n), idx(n), which(n), searching(n), is_deep(n), best(n), psf(n), pdx(n))
    do i = 1, n
      pos(i) = 0
      shallow(i) = 0
      best(i) = 0.0
      kind(i) = 0
      chosen(i) = 0
      searching(i) = .true.
    end do
    do
      m = 0
      do i = 1, n
        if (.not. searching(i)) cycle
        c = pos(i) + 1
        do while (c <= cand%count(i))
          if (cand%triggers(i, c)) exit
          c = c + 1
        end do
        if (c > cand%count(i)) then
          searching(i) = .false.
          if (shallow(i) > 0) then
            kind(i) = 1
            chosen(i) = shallow(i)
          end if
          cycle
        end if
        pos(i) = c
        m = m + 1
        idx(m) = i
        which(m) = c
      end do
      if (m == 0) exit
      call take_candidate(cand, env, m, idx(1:m), which(1:m), src)
      do j = 1, m
        psf(j) = sf(idx(j))
        pdx(j) = dx(idx(j))
      end do
      call ascend(env, idx(1:m), src, psf(1:m), pdx(1:m), pl, stop_deep=.true., deep=is_deep(1:m))
      do j = 1, m
        i = idx(j)
        if (is_deep(j)) then
          kind(i) = 2
          chosen(i) = which(j)
          searching(i) = .false.
        else if (pl%valid(j) .and. (shallow(i) == 0 .or. pl%depth(j) > best(i))) then
          shallow(i) = which(j)
          best(i) = pl%depth(j)
        end if
      end do
    end do
  end subroutine

  !> The full cloud of every convecting column, written into the outputs.
  subroutine cloud_columns(env, cand, sf, dx, hfx, ust, zol, kind, chosen, lev, col)
    type(environment), intent(in) :: env
    type(candidates), intent(in) :: cand
    real(rk), intent(in), dimension(:) :: sf, dx, hfx, ust, zol
    integer, intent(in) :: kind(:), chosen(:)
    real(rk), intent(inout) :: lev(:, :, :), col(:, :)
    type(environment) :: penv
    type(source_layer) :: src
    type(plume) :: pl
    type(draft) :: dn
    integer, allocatable :: idx(:), which(:)
    logical, allocatable :: deep(:)
    real(rk), allocatable :: psf(:), pdx(:), phfx(:), pust(:), pzol(:), rain(:, :), production(:), pef(:), &
                             t_adv(:), t_conv(:), v_sub(:), heating(:, :), moistening(:, :), liquid(:, :), ice(:, :)
    integer :: n, nz, m, i, j, k
    real(rk) :: cloud
    n = env%n
    nz = env%nz
    allocate(idx(n), which(n))
    m = 0
    do i = 1, n
      if (kind(i) > 0) then
        m = m + 1
        idx(m) = i
        which(m) = chosen(i)
      end if
    end do
    if (m == 0) return
    allocate(deep(m), psf(m), pdx(m), phfx(m), pust(m), pzol(m), rain(m, nz), production(m), pef(m), &
             t_adv(m), t_conv(m), v_sub(m), heating(m, nz), moistening(m, nz), liquid(m, nz), ice(m, nz))
    do j = 1, m
      deep(j) = kind(idx(j)) == 2
      psf(j) = sf(idx(j))
      pdx(j) = dx(idx(j))
      phfx(j) = hfx(idx(j))
      pust(j) = ust(idx(j))
      pzol(j) = zol(idx(j))
    end do
    call pack_environment(env, m, idx(1:m), penv)
    call take_candidate(cand, env, m, idx(1:m), which(1:m), src)
    call ascend(penv, [(j, j = 1, m)], src, psf, pdx, pl)
    call taper(penv, src, pl, deep)
    call precipitation(pl, rain)
    do j = 1, m
      production(j) = 0.0
    end do
    do k = 1, nz
      do j = 1, m
        production(j) = production(j) + rain(j, k)
      end do
    end do
    call precipitation_efficiency(penv, src, pl, pef)
    call time_scales(penv, src, pl, deep, pdx, psf, phfx, pust, pzol, t_adv, t_conv, v_sub)
    call descend(penv, src, pl, deep, pef, production, dn)
    call initial_tendencies(penv, pl, dn, heating, moistening, liquid, ice)
    ! the outputs, field by field (rows of the output in column order)
    do k = 1, nz
      do j = 1, m
        cloud = merge(1.0, 0.0, k >= src%k_lcl(j) .and. k <= pl%k_top(j))
        lev(idx(j), f_buoy, k) = cloud * (pl%tv(j, k) - penv%tv(j, k))
        lev(idx(j), f_cond, k) = cloud * (pl%ql(j, k) + pl%qi(j, k))
        lev(idx(j), f_vel, k) = cloud * sqrt(max(pl%w2(j, k), 0.0))
        lev(idx(j), f_cloud, k) = cloud
      end do
    end do
    call put(f_mass, pl%mu)
    call put(f_ent, pl%eu)
    call put(f_det, pl%du)
    call put(f_rain, rain)
    call put(f_dmass, dn%md)
    call put(f_dent, dn%ed)
    call put(f_ddet, dn%dd)
    call put(f_heat, heating)
    call put(f_moist, moistening)
    call put(f_liq, liquid)
    call put(f_ice, ice)
    do j = 1, m
      i = idx(j)
      col(i, c_kind) = real(kind(i))
      col(i, c_lcl) = real(src%k_lcl(j))
      col(i, c_top) = real(pl%k_top(j))
      col(i, c_etl) = real(pl%k_etl(j))
      col(i, c_src) = real(src%base(j))
      col(i, c_zlcl) = src%z_lcl(j)
      col(i, c_depth) = pl%depth(j)
      col(i, c_mindepth) = pl%min_depth(j)
      col(i, c_cape) = pl%cape(j)
      col(i, c_timec) = t_conv(j)
      col(i, c_tadv) = t_adv(j)
      col(i, c_vsub) = v_sub(j)
      col(i, c_pef) = pef(j)
      col(i, c_srcdepth) = src%depth(j)
      col(i, c_dsrc) = real(dn%k_lfs(j))
      col(i, c_dbase) = real(dn%k_base(j))
      col(i, c_rain) = production(j)
      col(i, c_evap) = dn%evaporation(j)
    end do

  contains

    !> Field f of the level outputs from the packed (column, level) array x.
    subroutine put(f, x)
      integer, intent(in) :: f
      real(rk), intent(in) :: x(:, :)
      integer :: jj, kk
      do kk = 1, nz
        do jj = 1, m
          lev(idx(jj), f, kk) = x(jj, kk)
        end do
      end do
    end subroutine
  end subroutine
end module kernel_driver
