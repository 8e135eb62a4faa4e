!> The entraining-detraining updraft (Kain & Fritsch 1990, 1993; Kain 2004, section 2b) of a
!! source layer from its LCL, per unit cloud-base mass flux: moist ascent, glaciation,
!! condensate fallout and loading, vertical velocity, buoyancy sorting of the mixtures of
!! updraft and environmental air, and where it ends. Each level is one pass over the packed
!! columns, branch-free (a column still rising has act = 1).
module kernel_updraft
  use kernel_constants
  use kernel_math
  use kernel_thermo
  use kernel_environment
  use kernel_source
  implicit none
  private
  public :: plume, ascend

  !> The updraft of packed columns: (column, level) profiles, per-column results.
  type :: plume
    ! mass flux, entrainment, detrainment; temperature, vapour, liquid, ice (before mixing at
    ! the level); virtual temperature without / with loading; squared velocity; fallout per
    ! unit mass of updraft air; dilution by entrainment (mass after / before); detrained
    ! liquid and ice; the mass flux entering the level from below
    real(rk), allocatable, dimension(:, :) :: mu, eu, du, t, qv, ql, qi, tv, tvc, w2, fall_l, fall_i, &
                                              dilution, det_l, det_i, mu_in
    integer, allocatable :: k_top(:), k_etl(:)
    real(rk), allocatable :: cape(:), depth(:), min_depth(:), w_lcl(:)
    logical, allocatable :: valid(:)
  end type

contains

  !> The updraft from the LCL of each packed column's source layer src. Each column rises
  !! from its own LCL level; the columns still rising are kept contiguous (slots), so each
  !! step's loops run only over them. With stop_deep, a column stops as soon as its cloud is
  !! certainly deep (deep is then set): the search needs no more, and no profiles are kept.
  !! cols: the column of env of each packed column.
  subroutine ascend(env, cols, src, sf, dx, pl, stop_deep, deep)
    type(environment), intent(in) :: env
    integer, intent(in) :: cols(:)
    type(source_layer), intent(in) :: src
    real(rk), intent(in) :: sf(:), dx(:)
    type(plume), intent(out) :: pl
    logical, intent(in), optional :: stop_deep
    logical, intent(out), optional :: deep(:)
    integer :: m, mp, nz, j, k, s, na, last
    ! per slot: the column, its level, and the parcel's state
    integer, allocatable, dimension(:) :: lane, kc, k_lcl, top, k_etl, k_top
    real(rk), allocatable, dimension(:) :: te_u, qv_u, ql_u, qi_u, t_prev, tv_prev, tvc_prev, tve_prev, &
                                           z_prev, w2, mass, rei_prev, upold_prev, fe_prev, fd_prev, &
                                           radius, exhausted, certain, cape, min_depth, z_lcl, &
                                           fall_rate
    ! per slot: the environment at its level and this step's results
    real(rk), allocatable, dimension(:) :: p, lnp, z, tv_e, te_e, q_e, t_e, dp, dz, tu, qv, ql, qi, te, &
                                           new_l, new_i, w2_new, fall_l, fall_i, tv_u, tvc_u, dilbe, &
                                           buoyant, chi, ent, det, keep, done, t_guess, lapse
    real(rk) :: rho_lcl, stop
    integer, allocatable :: cap(:)

    stop = 0.0
    if (present(stop_deep)) stop = merge(1.0, 0.0, stop_deep)
    m = size(src%base)
    nz = env%nz
    mp = merge(0, m, stop > 0.0)   ! columns with profiles
    allocate(pl%mu(mp, nz), pl%eu(mp, nz), pl%du(mp, nz), pl%t(mp, nz), pl%qv(mp, nz), pl%ql(mp, nz), &
             pl%qi(mp, nz), pl%tv(mp, nz), pl%tvc(mp, nz), pl%w2(mp, nz), pl%fall_l(mp, nz), &
             pl%fall_i(mp, nz), pl%dilution(mp, nz), pl%det_l(mp, nz), pl%det_i(mp, nz), pl%mu_in(mp, nz))
    allocate(pl%k_top(m), pl%k_etl(m), pl%cape(m), pl%depth(m), pl%min_depth(m), pl%w_lcl(m), pl%valid(m))
    allocate(lane(m), kc(m), k_lcl(m), top(m), k_etl(m), k_top(m), cap(m))
    allocate(te_u(m), qv_u(m), ql_u(m), qi_u(m), t_prev(m), tv_prev(m), tvc_prev(m), tve_prev(m), &
             z_prev(m), w2(m), mass(m), rei_prev(m), upold_prev(m), fe_prev(m), fd_prev(m), &
             radius(m), exhausted(m), certain(m), cape(m), min_depth(m), z_lcl(m), &
             fall_rate(m))
    allocate(p(m), lnp(m), z(m), tv_e(m), te_e(m), q_e(m), t_e(m), dp(m), dz(m), tu(m), qv(m), ql(m), &
             qi(m), te(m), new_l(m), new_i(m), w2_new(m), fall_l(m), fall_i(m), tv_u(m), tvc_u(m), &
             dilbe(m), buoyant(m), chi(m), ent(m), det(m), keep(m), done(m), t_guess(m), lapse(m))

    ! Below the LCL: the source layer enters in proportion to each level's depth; its mass
    ! flux accumulates, then is carried to the LCL.
    do k = 1, nz
      do j = 1, mp
        pl%eu(j, k) = merge(env%dp(cols(j), k) / src%depth(j), 0.0, k >= src%base(j) .and. k <= src%top(j))
      end do
    end do
    ! Every other profile of the plume starts empty (and undiluted).
    pl%mu = 0.0; pl%du = 0.0; pl%mu_in = 0.0; pl%w2 = 0.0
    pl%t = 0.0; pl%qv = 0.0; pl%ql = 0.0; pl%qi = 0.0; pl%tv = 0.0; pl%tvc = 0.0
    pl%fall_l = 0.0; pl%fall_i = 0.0; pl%det_l = 0.0; pl%det_i = 0.0
    pl%dilution = 1.0
    do j = 1, mp
      pl%mu(j, 1) = merge(pl%eu(j, 1), 0.0, src%k_lcl(j) > 1)
    end do
    do k = 2, nz
      do j = 1, mp
        pl%mu(j, k) = merge(pl%mu(j, k - 1) + pl%eu(j, k), 0.0, k < src%k_lcl(j))
      end do
    end do

    do j = 1, m
      lane(j) = j
      kc(j) = src%k_lcl(j)
      k_lcl(j) = src%k_lcl(j)
      top(j) = src%top(j)
      z_lcl(j) = src%z_lcl(j)
      ! the parcel at the LCL: the mixed layer's theta_e and vapour, saturated at T_LCL
      te_u(j) = theta_e(src%p_mix(j), klog(p1000 / src%p_mix(j)), src%t_mix(j), src%q_mix(j))
      qv_u(j) = src%q_mix(j)
      ql_u(j) = 0.0
      qi_u(j) = 0.0
      t_prev(j) = src%t_lcl(j)
      tv_prev(j) = src%t_lcl(j) * (1.0 + ep1 * src%q_mix(j))
      tvc_prev(j) = tv_prev(j)
      tve_prev(j) = src%tv_env_lcl(j)
      z_prev(j) = src%z_lcl(j)
      ! vertical velocity at the LCL (Kain 2004, eq. 5)
      pl%w_lcl(j) = 1.0 + w_lcl_k * sqrt(max(src%z_lcl(j) - src%z_base(j), 0.0) * src%dt_trigger(j) &
                    / src%t_env_lcl(j))
      pl%w_lcl(j) = min(pl%w_lcl(j), w_lcl_max)
      w2(j) = pl%w_lcl(j) ** 2
      ! entrainment length (kernel_constants: mixing_coefficient)
      radius(j) = max(src%z_lcl(j), env%z(cols(j), src%top(j)), min_radius) / sf(j)
      ! the updraft ends when its mass flux falls below exhausted_flux (kg/s), with the LCL
      ! mass flux of an updraft at w_lcl over updraft_area of the grid cell
      rho_lcl = src%p_lcl(j) / (r_d * src%tv_env_lcl(j))
      exhausted(j) = exhausted_flux / (rho_lcl * updraft_area * dx(j) ** 2 * pl%w_lcl(j))
      fall_rate(j) = fallout_rate / kpow(sf(j), fallout_sf_power)
      mass(j) = 1.0
      rei_prev(j) = 0.0
      upold_prev(j) = 1.0
      fe_prev(j) = 1.0
      fd_prev(j) = 0.0
      certain(j) = 0.0
      lapse(j) = 6.5e-3
      k_top(j) = src%k_lcl(j) - 1
      ! before the parcel is buoyant anywhere its equilibrium level is the source layer's base
      k_etl(j) = src%base(j)
      cape(j) = 0.0
      min_depth(j) = deep_min + (deep_max - deep_min) * min(max(src%t_lcl(j) - 273.0, 0.0), 20.0) / 20.0
      pl%min_depth(j) = min_depth(j)
    end do
    na = m
    ! columns whose LCL is above the model top do not rise
    s = 1
    do while (s <= na)
      if (kc(s) > nz .or. kc(s) < 1) then
        call finish(s)
      else
        s = s + 1
      end if
    end do

    do while (na > 0)
      ! the environment at each slot's level
      do s = 1, na
        j = cols(lane(s))
        k = kc(s)
        p(s) = env%p(j, k)
        lnp(s) = env%lnp(j, k)
        z(s) = env%z(j, k)
        tv_e(s) = env%tv(j, k)
        te_e(s) = env%thetae(j, k)
        q_e(s) = env%q(j, k)
        t_e(s) = env%t(j, k)
        dp(s) = env%dp(j, k)
      end do
      ! moist ascent to the level (theta_e, vapour and condensate conserved), saturation
      ! adjustment, glaciation; vertical velocity, fallout, buoyancy; buoyancy sorting;
      ! entrainment, detrainment and the new state
      do s = 1, na
        dz(s) = max(z(s) - z_prev(s), 1.0)
        ! the parcel's temperature at the level, guessed with its last lapse rate
        t_guess(s) = t_prev(s) - lapse(s) * dz(s)
        te(s) = te_u(s)
        qv(s) = qv_u(s)
        ql(s) = ql_u(s)
        qi(s) = qi_u(s)
      end do
      call rise(na, p, lnp, t_prev, t_guess, te, qv, ql, qi, tu, new_l, new_i)
      call accelerate(na, fall_rate, dz, tv_e, tu, qv, ql, qi, new_l, new_i, tv_prev, tvc_prev, tve_prev, &
                      rei_prev, upold_prev, w2, w2_new, tv_u, tvc_u, dilbe, buoyant, fall_l, fall_i)
      call sort_mixtures(na, te, qv, ql, qi, tvc_u, tu, buoyant, te_e, q_e, p, lnp, tv_e, t_e, chi)
      do s = 1, na
        lapse(s) = max(min((t_prev(s) - tu(s)) / dz(s), 0.0098), 0.0)
      end do
      call exchange(na, dp, radius, buoyant, chi, w2_new, exhausted, dilbe, tu, tv_u, tvc_u, tv_e, z, &
                    te, qv, ql, qi, te_e, q_e, kc, k_lcl, top, z_lcl, min_depth, stop, &
                    fe_prev, fd_prev, rei_prev, upold_prev, mass, w2, te_u, qv_u, ql_u, qi_u, t_prev, &
                    tv_prev, tvc_prev, tve_prev, z_prev, cape, certain, k_etl, k_top, ent, det, keep, done)
      ! the profiles at the level (before mixing)
      do s = 1, na
        if (keep(s) <= 0.0 .or. mp == 0) cycle
        j = lane(s)
        k = kc(s)
        pl%t(j, k) = tu(s)
        pl%qv(j, k) = qv(s)
        pl%ql(j, k) = ql(s)
        pl%qi(j, k) = qi(s)
        pl%tv(j, k) = tv_u(s)
        pl%tvc(j, k) = tvc_u(s)
        pl%w2(j, k) = w2_new(s)
        pl%fall_l(j, k) = fall_l(s)
        pl%fall_i(j, k) = fall_i(s)
        pl%mu_in(j, k) = mass(s) - ent(s) + det(s)
        pl%dilution(j, k) = mass(s) / max(mass(s) - ent(s), 1.0e-20)
        pl%det_l(j, k) = ql(s) * det(s)
        pl%det_i(j, k) = qi(s) * det(s)
        pl%eu(j, k) = pl%eu(j, k) + ent(s)
        pl%du(j, k) = det(s)
        pl%mu(j, k) = mass(s)
      end do
      ! next level; the slots that stopped are given up
      s = 1
      do while (s <= na)
        kc(s) = kc(s) + int(keep(s))
        if (done(s) > 0.0 .or. kc(s) > nz .or. stop * certain(s) > 0.0) then
          call finish(s)
        else
          s = s + 1
        end if
      end do
    end do

    do j = 1, m
      pl%depth(j) = env%z(cols(j), max(pl%k_top(j), 1)) - src%z_lcl(j)
      ! a cloud rises above its LCL level and its source layer (Kain & Fritsch 1993; measured:
      ! also asking its equilibrium level to be at least at the source layer's top, i.e. the
      ! parcel buoyant somewhere, misses 94 of MSKF's shallow clouds: kind 0.9935 -> 0.9958)
      pl%valid(j) = pl%k_top(j) > src%k_lcl(j) .and. pl%k_top(j) > src%top(j)
    end do
    if (present(deep)) then
      do j = 1, m
        deep(j) = cap(j) > 0 .or. (pl%valid(j) .and. pl%depth(j) > pl%min_depth(j) .and. pl%cape(j) > 1.0)
      end do
    end if

  contains

    !> Records the column in slot s and moves the last slot into it.
    subroutine finish(s)
      integer, intent(in) :: s
      j = lane(s)
      pl%k_top(j) = k_top(s)
      pl%k_etl(j) = k_etl(s)
      pl%cape(j) = cape(s)
      cap(j) = int(certain(s))
      last = na
      lane(s) = lane(last); kc(s) = kc(last); k_lcl(s) = k_lcl(last); top(s) = top(last)
      k_etl(s) = k_etl(last); k_top(s) = k_top(last)
      te_u(s) = te_u(last); qv_u(s) = qv_u(last); ql_u(s) = ql_u(last); qi_u(s) = qi_u(last)
      t_prev(s) = t_prev(last); tv_prev(s) = tv_prev(last); tvc_prev(s) = tvc_prev(last)
      tve_prev(s) = tve_prev(last); z_prev(s) = z_prev(last); w2(s) = w2(last); mass(s) = mass(last)
      rei_prev(s) = rei_prev(last); upold_prev(s) = upold_prev(last); fe_prev(s) = fe_prev(last)
      fd_prev(s) = fd_prev(last); radius(s) = radius(last); exhausted(s) = exhausted(last)
      fall_rate(s) = fall_rate(last)
      certain(s) = certain(last); cape(s) = cape(last); min_depth(s) = min_depth(last)
      z_lcl(s) = z_lcl(last); lapse(s) = lapse(last)
      keep(s) = keep(last); done(s) = done(last)
      na = na - 1
    end subroutine
  end subroutine

  !> Entrainment and detrainment at the level from the buoyancy sorting (the rates are the
  !! mean of this level's fractions of the mixing rate and the last level's: Kain & Fritsch
  !! 1993), whether the parcel completes the level (keep) or stops below it (done: no kinetic
  !! energy left, or all its mass detrains), and the state it takes to the next level:
  !! mixing with the entrained environmental air.
  subroutine exchange(na, dp, radius, buoyant, chi, w2_new, exhausted, dilbe, tu, tv_u, tvc_u, tv_e, z, &
                      te, qv, ql, qi, te_e, q_e, kc, k_lcl, top, z_lcl, min_depth, stop, &
                      fe_prev, fd_prev, rei_prev, upold_prev, mass, w2, te_u, qv_u, ql_u, qi_u, t_prev, &
                      tv_prev, tvc_prev, tve_prev, z_prev, cape, certain, k_etl, k_top, ent, det, keep, done)
    integer, intent(in) :: na
    real(rk), intent(in), dimension(na) :: dp, radius, buoyant, chi, w2_new, exhausted, dilbe, tu, tv_u, &
                                           tvc_u, tv_e, z, te, qv, ql, qi, te_e, q_e, z_lcl, min_depth
    integer, intent(in), dimension(na) :: kc, k_lcl, top
    real(rk), intent(in) :: stop
    real(rk), intent(inout), dimension(na) :: fe_prev, fd_prev, rei_prev, upold_prev, mass, w2, te_u, qv_u, &
                                              ql_u, qi_u, t_prev, tv_prev, tvc_prev, tve_prev, z_prev, cape, &
                                              certain
    integer, intent(inout), dimension(na) :: k_etl, k_top
    real(rk), intent(out), dimension(na) :: ent, det, keep, done
    real(rk) :: rei, fe, fd, ends, stalls, upold, upnew, rf, w
    integer :: s, ik
    do s = 1, na
      rei = mixing_coefficient * dp(s) / radius(s)
      fe = max(buoyant(s) * 2.0 * mixed_fraction(chi(s)), min_entrained)
      fd = detrain_factor * (buoyant(s) * 2.0 * mixed_fraction(1.0 - chi(s)) + (1.0 - buoyant(s)))
      ent(s) = 0.5 * rei * (fe_prev(s) + fe)
      det(s) = 0.5 * rei * (fd_prev(s) + fd)
      stalls = above(1.0e-3, w2_new(s))
      ends = max(stalls, above(exhausted(s), mass(s) - det(s)))
      done(s) = ends
      w = 1.0 - ends
      keep(s) = w
      ik = int(w)
      k_etl(s) = k_etl(s) + int(ends * (1.0 - stalls)) * (kc(s) - 1 - k_etl(s))
      k_etl(s) = k_etl(s) + ik * int(buoyant(s)) * (kc(s) - k_etl(s))
      k_top(s) = ik * kc(s) + (1 - ik) * k_top(s)
      cape(s) = cape(s) + w * max(dilbe(s), 0.0) * g
      upold = mass(s) - det(s)
      upnew = upold + ent(s)
      rf = upold / max(upnew, 1.0e-20)
      qv_u(s) = blend((upold * qv(s) + ent(s) * q_e(s)) / max(upnew, 1.0e-20), qv_u(s), w)
      te_u(s) = blend((upold * te(s) + ent(s) * te_e(s)) / max(upnew, 1.0e-20), te_u(s), w)
      ql_u(s) = blend(ql(s) * rf, ql_u(s), w)
      qi_u(s) = blend(qi(s) * rf, qi_u(s), w)
      mass(s) = blend(upnew, mass(s), w)
      w2(s) = blend(w2_new(s), w2(s), w)
      fe_prev(s) = blend(fe, fe_prev(s), w)
      fd_prev(s) = blend(fd, fd_prev(s), w)
      rei_prev(s) = blend(rei, rei_prev(s), w)
      upold_prev(s) = blend(upold, upold_prev(s), w)
      t_prev(s) = blend(tu(s), t_prev(s), w)
      tv_prev(s) = blend(tv_u(s), tv_prev(s), w)
      tvc_prev(s) = blend(tvc_u(s), tvc_prev(s), w)
      tve_prev(s) = blend(tv_e(s), tve_prev(s), w)
      z_prev(s) = blend(z(s), z_prev(s), w)
      ! certainly deep: the cloud already rises high enough above its LCL and source layer,
      ! with buoyant energy (the tests only become truer as it rises)
      certain(s) = max(certain(s), stop * w * above(real(kc(s)), real(k_lcl(s))) * above(real(kc(s)), real(top(s))) &
                       * above(z(s) - z_lcl(s), min_depth(s)) &
                       * above(cape(s), 1.0))
    end do
  end subroutine

  !> Moist ascent of the parcels to a level: saturation adjustment from theta_e, then glaciation.
  subroutine rise(m, p, lnp, t_prev, t_guess, te, qv, ql, qi, tu, new_l, new_i)
    integer, intent(in) :: m
    real(rk), intent(in) :: p(m), lnp(m), t_prev(m), t_guess(m)
    real(rk), intent(inout) :: te(m), qv(m), ql(m), qi(m)
    real(rk), intent(out) :: tu(m), new_l(m), new_i(m)
    integer :: j
    do j = 1, m
      call saturation_adjust(te(j), p(j), lnp(j), t_guess(j), tu(j), qv(j), ql(j), qi(j), new_l(j))
      new_i(j) = 0.0
      call glaciate(lnp(j), t_prev(j), tu(j), te(j), qv(j), ql(j), qi(j), new_l(j), new_i(j))
    end do
  end subroutine

  !> The parcels' buoyancy over the layer, condensate fallout, vertical velocity (buoyancy,
  !! entrainment drag, loading: Kain & Fritsch 1990, 1993) and dilute buoyant energy.
  subroutine accelerate(m, fall_rate, dz, tv_e, tu, qv, ql, qi, new_l, new_i, tv_prev, tvc_prev, tve_prev, &
                        rei_prev, upold_prev, w2, w2_new, tv_u, tvc_u, dilbe, buoyant, fall_l, fall_i)
    integer, intent(in) :: m
    real(rk), intent(in), dimension(m) :: fall_rate, dz, tv_e, tu, new_l, new_i, tv_prev, tvc_prev, tve_prev, &
                                          rei_prev, upold_prev, w2
    real(rk), intent(inout), dimension(m) :: qv, ql, qi
    real(rk), intent(out), dimension(m) :: w2_new, tv_u, tvc_u, dilbe, buoyant, fall_l, fall_i
    real(rk) :: boterm, enterm
    integer :: j
    do j = 1, m
      tv_u(j) = tu(j) * (1.0 + ep1 * qv(j))
      boterm = 2.0 * dz(j) * g * ((tv_prev(j) + tv_u(j)) / (tve_prev(j) + tv_e(j)) - 1.0) / virtual_mass
      enterm = 2.0 * rei_prev(j) * w2(j) / upold_prev(j)
      w2_new(j) = w2(j)
      call fallout(fall_rate(j), dz(j), boterm, enterm, w2_new(j), ql(j), qi(j), new_l(j), new_i(j), fall_l(j), fall_i(j))
      tvc_u(j) = tu(j) * (1.0 + ep1 * qv(j) - ql(j) - qi(j))
      dilbe(j) = ((tvc_prev(j) + tvc_u(j)) / (tve_prev(j) + tv_e(j)) - 1.0) * dz(j)
      buoyant(j) = above(tvc_u(j), tv_e(j))
    end do
  end subroutine

  !> The critical fraction of environmental air of the buoyant parcels (0 for the others).
  subroutine sort_mixtures(m, te, qv, ql, qi, tvc_u, tu, buoyant, te_e, q_e, p, lnp, tv_e, t_e, chi)
    integer, intent(in) :: m
    real(rk), intent(in), dimension(m) :: te, qv, ql, qi, tvc_u, tu, buoyant, te_e, q_e, p, lnp, tv_e, t_e
    real(rk), intent(out) :: chi(m)
    integer :: j
    do j = 1, m
      chi(j) = buoyant(j) * critical_fraction(te(j), qv(j), ql(j), qi(j), tvc_u(j), te_e(j), q_e(j), p(j), &
                                              lnp(j), tv_e(j), tu(j), t_e(j))
    end do
  end subroutine

  !> Freezing of the updraft's liquid, linearly in temperature between t_freeze_start and
  !! t_freeze_end (Kain & Fritsch 1993): the fraction of the condensate that freezes over
  !! the layer releases its fusion heat (L_f = L_s - L_v, both linear in temperature), which
  !! warms the parcel at constant vapour; theta_e follows (saturated form). No effect above
  !! t_freeze_start. Choice, measured: letting the vapour also deposit towards saturation
  !! over the mixed-phase condensate (with L_v) lowers CUTOP agreement 0.811 -> 0.791 and
  !! the UDR shape R2 0.848 -> 0.778; with L_s, to 0.735.
  elemental subroutine glaciate(lnp, t_prev, t, te, qv, ql, qi, new_l, new_i)
    real(rk), intent(in) :: lnp, t_prev
    real(rk), intent(inout) :: t, te, qv, ql, qi, new_l, new_i
    real(rk) :: on, frc, f_first, f_next, q_frz, l_c, l_f, cpm
    on = at_least(t_freeze_start, t)
    f_first = (t_freeze_start - t) / (t_freeze_start - t_freeze_end)
    f_next = (t_prev - t) / max(t_prev - t_freeze_end, 1.0e-6)
    frc = on * blend(1.0, blend(f_first, f_next, above(t_prev, t_freeze_start)), at_least(t_freeze_end, t))
    q_frz = (ql + new_l) * frc
    new_i = new_i + new_l * frc
    new_l = new_l - new_l * frc
    qi = qi + ql * frc
    ql = ql - ql * frc
    l_c = 2.5e6 - 2369.276 * (t - t00)
    l_f = 2833922.0 - 259.532 * (t - t00) - l_c
    cpm = cp * (1.0 + 0.89 * qv)
    t = t + on * l_f * q_frz / cpm
    te = blend(theta_e_saturated(lnp, t, qv), te, on)
  end subroutine

  !> Condensate fallout over the layer (Ogura & Cho 1973: dq/dt = -c q over the ascent time
  !! dz / w; Kain & Fritsch 1993: 60 % of the new condensate exposed to it, 40 % kept) and the
  !! new squared vertical velocity: buoyancy and entrainment terms given, loading by the
  !! layer's mean condensate. fall_l, fall_i: fallout per unit mass of updraft air.
  elemental subroutine fallout(rate, dz, boterm, enterm, w2, ql, qi, new_l, new_i, fall_l, fall_i)
    real(rk), intent(in) :: rate, dz, boterm, enterm, new_l, new_i
    real(rk), intent(inout) :: w2, ql, qi
    real(rk), intent(out) :: fall_l, fall_i
    real(rk) :: qtot, qnew, w2_est, wavg, f_new_l, f_l, oldq, load
    qtot = ql + qi
    qnew = new_l + new_i
    w2_est = max(w2 + boterm - enterm - 2.0 * g * dz * 0.5 * (qtot + qnew) / virtual_mass, 0.0)
    wavg = max(0.5 * (sqrt(max(w2, 0.0)) + sqrt(w2_est)), 1.0e-3)
    f_new_l = new_l / (qnew + 1.0e-8)
    qtot = qtot + 0.6 * qnew
    oldq = qtot
    f_l = (0.6 * new_l + ql) / (qtot + 1.0e-8)
    qtot = qtot * kexp(-rate * dz / wavg)
    fall_l = f_l * (oldq - qtot)
    fall_i = (1.0 - f_l) * (oldq - qtot)
    load = 0.5 * (oldq + qtot - 0.2 * qnew)
    w2 = w2 + boterm - enterm - 2.0 * g * dz * load / virtual_mass
    w2 = blend(1.0e-4, w2, above(1.0e-4, abs(w2)))
    ql = f_l * qtot + f_new_l * 0.4 * qnew
    qi = (1.0 - f_l) * qtot + (1.0 - f_new_l) * 0.4 * qnew
  end subroutine

  !> Density temperature of the mixture of updraft air with a fraction chi of environmental
  !! air: theta_e, vapour and condensate mixed linearly, then saturation_adjust.
  elemental real(rk) function mixture_tv(chi, te_u, qv_u, ql_u, qi_u, te_e, q_e, p, lnp, t_u, t_e) result(tv)
    real(rk), intent(in) :: chi, te_u, qv_u, ql_u, qi_u, te_e, q_e, p, lnp, t_u, t_e
    real(rk) :: qv, ql, qi, t, nl
    qv = chi * q_e + (1.0 - chi) * qv_u
    ql = (1.0 - chi) * ql_u
    qi = (1.0 - chi) * qi_u
    call saturation_adjust(chi * te_e + (1.0 - chi) * te_u, p, lnp, chi * t_e + (1.0 - chi) * t_u, t, qv, ql, &
                           qi, nl)
    tv = t * (1.0 + ep1 * qv - ql - qi - nl)
  end function

  !> The critical fraction of environmental air (Kain & Fritsch 1990) of a buoyant updraft:
  !! 1 if the mixture with 95 % environmental air is still buoyant, else extrapolated
  !! linearly from the updraft through the mixture with 10 % environmental air.
  elemental real(rk) function critical_fraction(te_u, qv_u, ql_u, qi_u, tvc_u, te_e, q_e, p, lnp, tv_e, &
                                                t_u, t_e) result(chi)
    real(rk), intent(in) :: te_u, qv_u, ql_u, qi_u, tvc_u, te_e, q_e, p, lnp, tv_e, t_u, t_e
    real(rk) :: tv_dry, tv_moist, diff, extrapolated
    tv_dry = mixture_tv(test_mix_dry, te_u, qv_u, ql_u, qi_u, te_e, q_e, p, lnp, t_u, t_e)
    tv_moist = mixture_tv(test_mix_moist, te_u, qv_u, ql_u, qi_u, te_e, q_e, p, lnp, t_u, t_e)
    diff = abs(tv_moist - tvc_u)
    extrapolated = max(min((tvc_u - tv_e) * test_mix_moist / max(diff, 1.0e-3), 1.0), 0.0)
    chi = blend(1.0, extrapolated, max(above(tv_dry, tv_e), above(1.0e-3, diff)))
  end function

  !> Fraction of environmental air in the mixtures with chi below chi_c, per unit total
  !! mixing: int_0^chi_c x f(x) dx with f the Gaussian of mean 1/2 and standard deviation 1/6
  !! lowered to vanish at 0 and 1 and normalised (Kain & Fritsch 1990); 1/2 at chi_c = 1.
  !! Closed form with erf (Abramowitz & Stegun 7.1.26, error < 1.5e-7).
  elemental real(rk) function mixed_fraction(chi_c)
    real(rk), intent(in) :: chi_c
    real(rk), parameter :: s = 1.0 / 6.0, mu = 0.5, rootpi2 = 1.25331414
    real(rk), parameter :: k0 = 0.011108997          ! exp(-mu^2 / (2 s^2))
    real(rk), parameter :: erf0 = 0.997300204        ! erf(mu / (s sqrt 2))
    real(rk), parameter :: norm = 2.0 * s * rootpi2 * erf0 - k0
    real(rk) :: c, x
    c = max(min(chi_c, 1.0), 0.0)
    x = -s ** 2 * (kexp(-(c - mu) ** 2 / (2.0 * s ** 2)) - k0) &
        + mu * s * rootpi2 * (erf_as((c - mu) / (s * 1.41421356)) + erf0) - k0 * c ** 2 / 2.0
    mixed_fraction = x / norm
  end function

  !> erf(x), Abramowitz & Stegun (1964) 7.1.26.
  elemental real(rk) function erf_as(x)
    real(rk), intent(in) :: x
    real(rk) :: a, t
    a = abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    erf_as = sign(1.0 - t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 &
                 + t * 1.061405429)))) * kexp(-a * a), x)
  end function
end module kernel_updraft
