!> Candidate updraft source layers and the trigger (Kain 2004, section 2a).
!!
!! Candidate bases: the lowest level, then the first level below each successive 15 hPa
!! step above it, while within 300 hPa of the lowest level (the steps count from the lowest
!! level's pressure: measured). From each base, levels are added until the layer is deeper
!! than 50 hPa; the layer is mixed (pressure-depth weighted temperature, vapour, height,
!! pressure) and lifted dry to its LCL. It triggers if T_LCL + dT >= T_env(LCL), with
!! dT = 4.64 (w_g - c(z_LCL))^(1/3) from the grid-scale vertical velocity W0AVG at the LCL
!! (Kain 2004, eq. 1-2; w_g scaled by DX / 25 km on grids of 25 km and more; dT = 0 below
!! an excess of 1e-4 m/s).
module kernel_source
  use kernel_constants
  use kernel_math
  use kernel_thermo
  use kernel_environment
  implicit none
  private
  public :: candidates, find_candidates, source_layer, take_candidate

  !> One source layer per packed column.
  type :: source_layer
    integer, allocatable :: base(:), top(:), k_lcl(:)
    real(rk), allocatable, dimension(:) :: t_mix, q_mix, z_mix, p_mix, depth, t_lcl, z_lcl, p_lcl, &
                                           t_env_lcl, tv_env_lcl, dt_trigger, z_base
  end type

  !> Every candidate of every column, (column, candidate) arrays.
  type :: candidates
    integer :: most = 0
    integer, allocatable :: count(:)
    integer, allocatable, dimension(:, :) :: base, top, k_lcl
    logical, allocatable :: triggers(:, :)
    real(rk), allocatable, dimension(:, :) :: t_mix, q_mix, z_mix, p_mix, depth, t_lcl, z_lcl, &
                                              p_lcl, t_env_lcl, tv_env_lcl, dt_trigger
  end type

contains

  subroutine find_candidates(env, dx, cand)
    type(environment), intent(in) :: env
    real(rk), intent(in) :: dx(:)
    type(candidates), intent(out) :: cand
    integer :: n, nz, i, k, c
    integer, allocatable :: base(:, :)
    real(rk), allocatable :: next_p(:)
    logical :: take
    n = env%n
    nz = env%nz
    allocate(base(n, nz), next_p(n), cand%count(n))
    do i = 1, n
      cand%count(i) = 1
      base(i, 1) = 1
      next_p(i) = env%p(i, 1) - src_spacing
    end do
    do k = 2, nz
      if (all(env%p(:, k) < env%p(:, 1) - src_search)) exit
      do i = 1, n
        take = env%p(i, k) < next_p(i) .and. env%p(i, k) >= env%p(i, 1) - src_search
        if (take) then
          cand%count(i) = cand%count(i) + 1
          base(i, cand%count(i)) = k
          next_p(i) = next_p(i) - src_spacing
        end if
      end do
    end do
    cand%most = maxval(cand%count)
    c = cand%most
    allocate(cand%base(n, c), cand%top(n, c), cand%k_lcl(n, c), cand%triggers(n, c), &
             cand%t_mix(n, c), cand%q_mix(n, c), cand%z_mix(n, c), cand%p_mix(n, c), &
             cand%depth(n, c), cand%t_lcl(n, c), cand%z_lcl(n, c), cand%p_lcl(n, c), &
             cand%t_env_lcl(n, c), cand%tv_env_lcl(n, c), cand%dt_trigger(n, c))
    do c = 1, cand%most
      do i = 1, n
        cand%base(i, c) = merge(base(i, c), 0, c <= cand%count(i))
      end do
      call lift_layer(env, dx, cand%base(:, c), cand%top(:, c), cand%k_lcl(:, c), &
                      cand%triggers(:, c), cand%t_mix(:, c), cand%q_mix(:, c), cand%z_mix(:, c), &
                      cand%p_mix(:, c), cand%depth(:, c), cand%t_lcl(:, c), cand%z_lcl(:, c), &
                      cand%p_lcl(:, c), cand%t_env_lcl(:, c), cand%tv_env_lcl(:, c), &
                      cand%dt_trigger(:, c))
    end do
  end subroutine

  !> Mixes the layer from each column's base (0: none), lifts it to its LCL, applies the
  !! trigger test.
  subroutine lift_layer(env, dx, base, top, k_lcl, triggers, t_mix, q_mix, z_mix, p_mix, depth, &
                        t_lcl, z_lcl, p_lcl, t_env_lcl, tv_env_lcl, dt_trigger)
    type(environment), intent(in) :: env
    real(rk), intent(in) :: dx(:)
    integer, intent(in) :: base(:)
    integer, intent(out) :: top(:), k_lcl(:)
    logical, intent(out) :: triggers(:)
    real(rk), intent(out), dimension(:) :: t_mix, q_mix, z_mix, p_mix, depth, t_lcl, z_lcl, p_lcl, &
                                           t_env_lcl, tv_env_lcl, dt_trigger
    integer :: n, nz, i, k, lo, kb, kk
    real(rk) :: w, f, w_g, w_excess, q_env
    n = env%n
    nz = env%nz
    lo = nz
    do i = 1, n
      t_mix(i) = 0.0; q_mix(i) = 0.0; z_mix(i) = 0.0; p_mix(i) = 0.0; depth(i) = 0.0
      top(i) = 0
      if (base(i) > 0) lo = min(lo, base(i))
    end do
    ! Layer sums: from the base, levels are added while the layer is not deeper than src_depth.
    do k = lo, nz
      do i = 1, n
        w = merge(env%dp(i, k), 0.0, base(i) > 0 .and. k >= base(i) .and. depth(i) <= src_depth)
        depth(i) = depth(i) + w
        t_mix(i) = t_mix(i) + w * env%t(i, k)
        q_mix(i) = q_mix(i) + w * env%q(i, k)
        z_mix(i) = z_mix(i) + w * env%z(i, k)
        p_mix(i) = p_mix(i) + w * env%p(i, k)
        top(i) = merge(k, top(i), w > 0.0)
      end do
      if (all(base <= 0 .or. depth > src_depth)) exit
    end do
    do i = 1, n
      f = 1.0 / max(depth(i), 1.0)
      t_mix(i) = merge(t_mix(i) * f, 280.0, base(i) > 0)
      q_mix(i) = merge(q_mix(i) * f, 1.0e-3, base(i) > 0)
      z_mix(i) = z_mix(i) * f
      p_mix(i) = merge(p_mix(i) * f, 9.0e4, base(i) > 0)
      ! dry lift to the LCL: dew point (Bolton eq. 10), T_LCL fit, dry adiabatic lapse g / cp
      t_lcl(i) = min(lcl_temperature(t_mix(i), dew_point(max(q_mix(i) * p_mix(i) / (ep2 + q_mix(i)), &
                                                                 1.0e-3))), t_mix(i))
      z_lcl(i) = z_mix(i) + (t_mix(i) - t_lcl(i)) * cp / g
    end do
    ! The LCL level: the first level at or above the LCL (MSKF's CUBOT).
    do i = 1, n
      k_lcl(i) = nz + 1
    end do
    do k = nz, 1, -1
      do i = 1, n
        k_lcl(i) = merge(k, k_lcl(i), env%z(i, k) >= z_lcl(i))
      end do
    end do
    do i = 1, n
      triggers(i) = .false.
      t_env_lcl(i) = 0.0; tv_env_lcl(i) = 0.0; p_lcl(i) = 0.0; dt_trigger(i) = 0.0
      if (base(i) <= 0 .or. k_lcl(i) < 2 .or. k_lcl(i) > nz) then
        k_lcl(i) = 0
        cycle
      end if
      kk = k_lcl(i)
      kb = kk - 1
      f = (z_lcl(i) - env%z(i, kb)) / (env%z(i, kk) - env%z(i, kb))
      t_env_lcl(i) = env%t(i, kb) + (env%t(i, kk) - env%t(i, kb)) * f
      q_env = env%q(i, kb) + (env%q(i, kk) - env%q(i, kb)) * f
      tv_env_lcl(i) = t_env_lcl(i) * (1.0 + ep1 * q_env)
      p_lcl(i) = env%p(i, kb) + (env%p(i, kk) - env%p(i, kb)) * f
      w_g = env%w0(i, kb) + (env%w0(i, kk) - env%w0(i, kb)) * f
      if (dx(i) >= 25000.0) w_g = w_g * dx(i) / 25000.0
      w_excess = w_g - trigger_w * min(z_lcl(i) / trigger_z, 1.0)
      if (w_excess >= 1.0e-4) dt_trigger(i) = trigger_k * kpow(w_excess, 0.33)
      triggers(i) = t_lcl(i) + dt_trigger(i) >= t_env_lcl(i)
    end do
  end subroutine

  !> The candidates cand(idx(j), which(j)) as one source layer per packed column j.
  subroutine take_candidate(cand, env, m, idx, which, src)
    type(candidates), intent(in) :: cand
    type(environment), intent(in) :: env
    integer, intent(in) :: m, idx(m), which(m)
    type(source_layer), intent(out) :: src
    integer :: j, i, c
    allocate(src%base(m), src%top(m), src%k_lcl(m), src%t_mix(m), src%q_mix(m), src%z_mix(m), &
             src%p_mix(m), src%depth(m), src%t_lcl(m), src%z_lcl(m), src%p_lcl(m), &
             src%t_env_lcl(m), src%tv_env_lcl(m), src%dt_trigger(m), src%z_base(m))
    do j = 1, m
      i = idx(j)
      c = which(j)
      src%base(j) = cand%base(i, c)
      src%top(j) = cand%top(i, c)
      src%k_lcl(j) = cand%k_lcl(i, c)
      src%t_mix(j) = cand%t_mix(i, c)
      src%q_mix(j) = cand%q_mix(i, c)
      src%z_mix(j) = cand%z_mix(i, c)
      src%p_mix(j) = cand%p_mix(i, c)
      src%depth(j) = cand%depth(i, c)
      src%t_lcl(j) = cand%t_lcl(i, c)
      src%z_lcl(j) = cand%z_lcl(i, c)
      src%p_lcl(j) = cand%p_lcl(i, c)
      src%t_env_lcl(j) = cand%t_env_lcl(i, c)
      src%tv_env_lcl(j) = cand%tv_env_lcl(i, c)
      src%dt_trigger(j) = cand%dt_trigger(i, c)
      src%z_base(j) = env%z(i, src%base(j))
    end do
  end subroutine
end module kernel_source
