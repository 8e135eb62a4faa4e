!> The downdraft of a deep cloud (Kain 2004, section 2c), per unit cloud-base updraft mass
!! flux. Its source (the level of free sink) is the first level 150 hPa above the level over
!! the updraft source layer (measured), at most one level below the equilibrium level; it
!! takes in environmental air from the top of the source layer up to there, in proportion to
!! each level's depth, and gives it out within and below the source layer, again in
!! proportion to depth. Its mass flux is 2 (1 - RH) with RH the mean relative humidity of
!! the air it takes in; the air keeps its theta_e and descends at a relative humidity
!! falling by 20 % per km below cloud base (Kain 2004). What it evaporates may not exceed
!! the part of the updraft's precipitation that does not reach the ground, (1 - PE) P;
!! otherwise its mass flux is reduced in proportion.
module kernel_downdraft
  use kernel_constants
  use kernel_math
  use kernel_thermo
  use kernel_environment
  use kernel_source
  use kernel_updraft
  implicit none
  private
  public :: draft, descend

  !> The downdraft of packed columns.
  type :: draft
    real(rk), allocatable, dimension(:, :) :: md, ed, dd, theta, q   ! (column, level)
    integer, allocatable :: k_lfs(:), k_base(:)
    real(rk), allocatable :: evaporation(:)
  end type

contains

  subroutine descend(env, src, pl, deep, pef, production, dn)
    type(environment), intent(in) :: env
    type(source_layer), intent(in) :: src
    type(plume), intent(in) :: pl
    logical, intent(in) :: deep(:)
    real(rk), intent(in) :: pef(:), production(:)
    type(draft), intent(out) :: dn
    integer :: m, nz, j, k, it
    real(rk), allocatable, dimension(:) :: p_ref, depth_in, depth_out, rh, te_d, q_d0, amount, evap
    real(rk) :: w, ts, qs_s, rh_d, t, q, limit
    logical :: inflow
    m = size(pef)
    nz = env%nz
    allocate(dn%md(m, nz), dn%ed(m, nz), dn%dd(m, nz), dn%theta(m, nz), dn%q(m, nz), dn%k_lfs(m), &
             dn%k_base(m), dn%evaporation(m))
    allocate(p_ref(m), depth_in(m), depth_out(m), rh(m), te_d(m), q_d0(m), amount(m), evap(m))
    dn%md = 0.0; dn%ed = 0.0; dn%dd = 0.0; dn%theta = 0.0; dn%q = 0.0
    do j = 1, m
      p_ref(j) = env%p(j, min(src%top(j) + 1, nz))
      dn%k_lfs(j) = 0
      dn%k_base(j) = 0
    end do
    ! the source: the first level dd_source_dp above the level over the source layer
    do k = nz, 1, -1
      do j = 1, m
        if (k > src%top(j) + 1 .and. env%p(j, k) < p_ref(j) - dd_source_dp) dn%k_lfs(j) = k
      end do
    end do
    do j = 1, m
      dn%k_lfs(j) = min(dn%k_lfs(j), pl%k_etl(j) - 1)
      if (.not. deep(j) .or. dn%k_lfs(j) <= src%top(j)) dn%k_lfs(j) = 0
      ! no downdraft under a cloud that makes much precipitation in moist air at the source
      ! (fitted to the oracle, kernel/README.md: production x RH_LFS^1.25 > 0.0245 separates
      ! MSKF's deep columns without a downdraft from those with one in 93 % of them)
      if (dn%k_lfs(j) > 0) then
        if (production(j) * kpow(max(min(env%q(j, dn%k_lfs(j)) / env%qs(j, dn%k_lfs(j)), 1.0), 1.0e-3), &
                                 dd_off_rh_power) > dd_off_production) dn%k_lfs(j) = 0
      end if
      depth_in(j) = 0.0; depth_out(j) = 0.0; rh(j) = 0.0; te_d(j) = 0.0; q_d0(j) = 0.0; evap(j) = 0.0
    end do
    ! the air taken in: mean relative humidity, theta_e and vapour
    do k = 1, nz
      do j = 1, m
        inflow = k > src%top(j) .and. k <= dn%k_lfs(j)
        w = merge(env%dp(j, k), 0.0, inflow)
        depth_in(j) = depth_in(j) + w
        rh(j) = rh(j) + w * min(env%q(j, k) / env%qs(j, k), 1.0)
        te_d(j) = te_d(j) + w * env%thetae(j, k)
        q_d0(j) = q_d0(j) + w * env%q(j, k)
        depth_out(j) = depth_out(j) + merge(env%dp(j, k), 0.0, dn%k_lfs(j) > 0 .and. k <= src%top(j))
      end do
    end do
    do j = 1, m
      w = 1.0 / max(depth_in(j), 1.0)
      rh(j) = rh(j) * w
      te_d(j) = merge(te_d(j) * w, env%thetae(j, 1), dn%k_lfs(j) > 0)
      q_d0(j) = q_d0(j) * w
      amount(j) = merge(dd_rh_factor * (1.0 - rh(j)), 0.0, dn%k_lfs(j) > 0)
    end do
    ! the air given out: theta_e conserved at the prescribed relative humidity
    do k = 1, min(maxval(src%top), nz)
      do j = 1, m
        if (dn%k_lfs(j) <= 0 .or. k > src%top(j)) cycle
        ! relative humidity falling by 20 %/km below the base of the updraft's source layer
        ! (Kain 2004 gives 20 %/km below cloud base; counted from the source layer's base,
        ! measured: RQVCUTEN profile R2 0.80 -> 0.87, RTHCUTEN 0.59 -> 0.63)
        rh_d = max(1.0 - 2.0e-4 * max(env%z(j, src%base(j)) - env%z(j, k), 0.0), 0.2)
        ts = saturated_temperature(te_d(j), env%p(j, k), env%lnp(j, k), env%t(j, k) - 3.0)
        qs_s = qsat(min(es_liquid(ts), 0.5 * env%p(j, k)), env%p(j, k))
        t = ts
        do it = 1, 3
          q = rh_d * qsat(min(es_liquid(t), 0.5 * env%p(j, k)), env%p(j, k))
          t = ts + (xlv0 - xlv1 * ts) * max(qs_s - q, 0.0) / (cp * (1.0 + 0.89 * q))
        end do
        q = rh_d * qsat(min(es_liquid(t), 0.5 * env%p(j, k)), env%p(j, k))
        w = merge(env%dp(j, k) / max(depth_out(j), 1.0), 0.0, dn%k_lfs(j) > 0 .and. k <= src%top(j))
        dn%theta(j, k) = merge(t * kexp(kappa * env%lnp(j, k)), 0.0, w > 0.0)
        dn%q(j, k) = merge(q, 0.0, w > 0.0)
        evap(j) = evap(j) + w * (q - q_d0(j))
      end do
    end do
    do j = 1, m
      ! the evaporation limit (1 - PE) P
      evap(j) = amount(j) * max(evap(j), 0.0)
      limit = (1.0 - pef(j)) * production(j)
      if (evap(j) > limit) then
        amount(j) = amount(j) * limit / evap(j)
        evap(j) = limit
      end if
      if (amount(j) <= 0.0) dn%k_lfs(j) = 0
      dn%evaporation(j) = merge(evap(j), 0.0, dn%k_lfs(j) > 0)
      dn%k_base(j) = merge(1, 0, dn%k_lfs(j) > 0)
    end do
    ! entrainment, detrainment and the mass flux leaving each level downwards (negative)
    do k = nz, 1, -1
      do j = 1, m
        if (dn%k_lfs(j) <= 0) cycle
        if (k > src%top(j) .and. k <= dn%k_lfs(j)) dn%ed(j, k) = amount(j) * env%dp(j, k) / depth_in(j)
        if (k <= src%top(j)) dn%dd(j, k) = amount(j) * env%dp(j, k) / depth_out(j)
        if (k < nz) then
          dn%md(j, k) = dn%md(j, k + 1) - dn%ed(j, k) + dn%dd(j, k)
        else
          dn%md(j, k) = -dn%ed(j, k)
        end if
        if (k == 1) dn%md(j, k) = 0.0
      end do
    end do
  end subroutine
end module kernel_downdraft
