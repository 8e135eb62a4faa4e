! MSKF's trigger, entraining updraft and downdraft, recomputed for a batch of columns as model
! features.
!
! The multi-scale Kain-Fritsch scheme (WRF cu_physics = 11) decides whether, from where, how
! high and how strongly a column convects by lifting parcels from candidate source layers
! through an entraining, precipitating updraft (Kain 2004, J. Appl. Meteor. 43; with the
! scale-aware trigger, entrainment, autoconversion and time scale of Zheng et al. 2016, MWR
! 144). The network would otherwise have to rediscover these thresholds from raw profiles;
! here they are computed, and the network learns the closure and the tendencies on top.
!
! For each column this module takes MSKF's path up to its closure:
!   * candidate source layers: the lowest level, then one every 15 hPa up to 300 hPa above it,
!     each deepened to at least 50 hPa and mixed;
!   * the trigger: LCL temperature plus the W0AVG-based perturbation against the environment;
!   * the updraft of the first layer that passes: moist-adiabatic ascent by the scheme's
!     theta_e lookup table, glaciation between -5 and -25 C, condensate
!     loading and fallout, the vertical-velocity equation, buoyancy-sorting entrainment and
!     detrainment (Kain-Fritsch Gaussian mixing), until the parcel stops;
!   * deep convection when the cloud is deeper than CHMIN(T_LCL) and has buoyant energy,
!     otherwise the next layer; shallow convection from the deepest remembered cloud when no
!     layer makes a deep one; the mass flux tapered to zero from the equilibrium level to
!     the top;
!   * the convective time scale from the cloud depth, the sub-cloud velocity scale and the
!     dilute buoyant energy (never shorter than the advective time DX / VCONV), and the
!     precipitation efficiency from shear and cloud-base height;
!   * the downdraft of a deep cloud: its source, entrainment, moist descent, detrainment
!     below the source layer and the evaporation that limits it;
!   * the tendencies these drafts give at the start of the closure, in the scheme's flux form.
! The closure (how much of the buoyant energy is removed) and how its time integration
! reshapes those tendencies are left to the network.
!
! Single precision and the scheme's own lookup-table construction, so that marginal decisions
! fall the way they fall in WRF. Arrays are (level, column), levels bottom-up.
module kf_updraft
  implicit none
  private
  public :: updraft_column, build_tables, N_LEVEL_FIELDS, N_COLUMN_FIELDS

  ! Output layout (emulator/updraft.py names them).
  integer, parameter :: N_LEVEL_FIELDS = 15, N_COLUMN_FIELDS = 18

  ! WRF's constants as the scheme receives them
  real, parameter :: g = 9.81, rd = 287.0, cp = 1004.5, xlv0 = 3.15e6, xlv1 = 2370.
  ! saturation vapour pressure es = aliq exp((bliq T - cliq) / (T - dliq)), WRF's SVP1..3
  real, parameter :: aliq = 611.2, bliq = 17.67, cliq = 17.67 * 273.15, dliq = 29.65
  real, parameter :: t00 = 273.16, p00 = 1.e5
  real, parameter :: ttfrz = 268.16, tbfrz = 248.16   ! glaciation starts / is complete
  real, parameter :: dpmin = 5.e3                     ! least source-layer depth, Pa
  real, parameter :: autoconversion = 0.03            ! fallout rate, 1/s (at 25 km)

  ! Lookup tables: parcel temperature and saturation mixing ratio as functions of saturated
  ! theta_e and pressure, and ln(e / aliq) for the dew point.
  integer, parameter :: nth = 250, npr = 220, nlu = 200
  real, parameter :: p_top_table = 5000., p_bottom_table = 110000.
  real, save :: t_table(nth, npr), qs_table(nth, npr), theta_e_base(npr), log_table(nlu)
  real, save :: per_pressure_step
  logical, save :: tables_ready = .false.

contains

  ! theta_e of saturated air at temperature t and pressure p (the scheme's formula).
  pure real function saturated_theta_e(t, p) result(th)
    real, intent(in) :: t, p
    real :: es, qs
    es = aliq * exp((bliq * t - cliq) / (t - dliq))
    qs = 0.622 * es / (p - es)
    th = t * (1.e5 / p)**(0.2854 * (1. - 0.28 * qs)) * exp((3374.6525 / t - 2.5403) * qs * (1. + 0.81 * qs))
  end function

  subroutine build_tables()
    ! For each pressure: theta_e at 150 K is the table's first row, then rows 1 K of theta_e
    ! apart; each row's temperature by the secant method from the previous row's.
    integer :: ip, it, iter
    real :: p, target, t_prev, f_prev, t_new, f_new, step, es
    if (tables_ready) return
    per_pressure_step = real(npr - 1) / (p_bottom_table - p_top_table)
    do ip = 1, npr
      p = p_top_table + real(ip - 1) / per_pressure_step
      theta_e_base(ip) = saturated_theta_e(150., p)
      do it = 1, nth
        target = theta_e_base(ip) + real(it - 1)
        t_prev = 150.
        if (it > 1) t_prev = t_table(it - 1, ip)
        f_prev = saturated_theta_e(t_prev, p) - target
        t_new = t_prev - 0.5 * f_prev
        do iter = 1, 11
          f_new = saturated_theta_e(t_new, p) - target
          if (abs(f_new) < 0.001) exit
          step = f_new * (t_new - t_prev) / (f_new - f_prev)
          t_prev = t_new
          f_prev = f_new
          t_new = t_new - step
        end do
        t_table(it, ip) = t_new
        es = aliq * exp((bliq * t_new - cliq) / (t_new - dliq))
        qs_table(it, ip) = 0.622 * es / (p - es)
      end do
    end do
    do it = 1, nlu
      log_table(it) = log(1.e-3 + real(it - 1) * 0.075)
    end do
    tables_ready = .true.
  end subroutine

  ! ln(e / aliq) from the table, as the scheme takes it for the dew point.
  real function log_vapour(e)
    real, intent(in) :: e
    real :: x, w
    integer :: i
    x = (e / aliq - 1.e-3) / 0.075
    i = min(max(int(x) + 1, 1), nlu - 1)
    w = x - real(i - 1)
    log_vapour = w * log_table(i + 1) + (1. - w) * log_table(i)
  end function

  ! Temperature at the LCL of air at (t, p, q): dew point, then the scheme's fit.
  real function lcl_temperature(t, p, q)
    real, intent(in) :: t, p, q
    real :: tl, td
    tl = log_vapour(q * p / (0.622 + q))
    td = (cliq - dliq * tl) / (bliq - tl)
    lcl_temperature = td - (.212 + 1.571e-3 * (td - t00) - 4.36e-4 * (t - t00)) * (t - td)
  end function

  ! Equivalent potential temperature of environmental air (t, p, q).
  real function environment_theta_e(p, t, q)
    real, intent(in) :: p, t, q
    real :: tsat
    tsat = lcl_temperature(t, p, q)
    environment_theta_e = t * (p00 / p)**(0.2854 * (1. - 0.28 * q)) &
                          * exp((3374.6525 / tsat - 2.5403) * q * (1. + 0.81 * q))
  end function

  ! Parcel of saturated theta_e thes at pressure p: its temperature tu and vapour qu, with
  ! condensate (qliq, qice) evaporated where the parcel would be subsaturated; qnew is the
  ! fresh condensate.
  subroutine moist_adjust(p, thes, tu, qu, qliq, qice, qnew)
    real, intent(in) :: p, thes
    real, intent(inout) :: tu, qu, qliq, qice
    real, intent(out) :: qnew
    real :: temp, qs, dq, qtot, latent, cpm
    call saturated_state(p, thes, temp, qs)
    dq = qs - qu
    if (dq <= 0.) then
      qnew = qu - qs
      qu = qs
    else
      qnew = 0.
      qtot = qliq + qice
      if (qtot >= dq) then
        qliq = qliq - dq * qliq / (qtot + 1.e-10)
        qice = qice - dq * qice / (qtot + 1.e-10)
        qu = qs
      else
        latent = xlv0 - xlv1 * temp
        cpm = 1004.5 * (1. + 0.89 * qu)
        if (qtot < 1.e-10) then
          temp = temp + latent * (dq / (1. + dq)) / cpm
        else
          temp = temp + latent * ((dq - qtot) / (1. + dq - qtot)) / cpm
          qu = qu + qtot
          qliq = 0.
          qice = 0.
        end if
      end if
    end if
    tu = temp
  end subroutine

  ! Temperature and saturation mixing ratio of saturated air of theta_e thes at pressure p,
  ! interpolated in the tables.
  subroutine saturated_state(p, thes, temp, qs)
    real, intent(in) :: p, thes
    real, intent(out) :: temp, qs
    real :: x, wp, y, wt, base
    integer :: ip, it
    x = (p - p_top_table) * per_pressure_step
    ip = min(max(int(x) + 1, 1), npr - 1)
    wp = x - aint(x)
    base = theta_e_base(ip) + (theta_e_base(ip + 1) - theta_e_base(ip)) * wp
    y = thes - base
    it = min(max(int(y) + 1, 1), nth - 1)
    wt = y - aint(y)
    temp = bilinear(t_table)
    qs = bilinear(qs_table)
  contains
    real function bilinear(table)
      real, intent(in) :: table(nth, npr)
      bilinear = table(it, ip) + (table(it + 1, ip) - table(it, ip)) * wt &
                 + (table(it, ip + 1) - table(it, ip)) * wp &
                 + (table(it, ip) - table(it + 1, ip) - table(it, ip + 1) + table(it + 1, ip + 1)) * wt * wp
    end function
  end subroutine

  ! Freezing qfrz of liquid warms the parcel; it is brought back to saturation over liquid
  ! by evaporating part of the new ice, and its theta_e follows.
  subroutine freeze(tu, p, theteu, qu, qfrz, qice)
    real, intent(in) :: p, qfrz
    real, intent(inout) :: tu, theteu, qu, qice
    real :: lc, ls, cpm, desdt, es, qs, dq
    lc = 2.5e6 - 2369.276 * (tu - 273.16)
    ls = 2833922. - 259.532 * (tu - 273.16)
    cpm = 1004.5 * (1. + 0.89 * qu)
    desdt = (cliq - bliq * dliq) / ((tu - dliq) * (tu - dliq))
    tu = tu + (ls - lc) * qfrz / (cpm + ls * qu * desdt)
    es = aliq * exp((bliq * tu - cliq) / (tu - dliq))
    qs = es * 0.622 / (p - es)
    dq = qs - qu
    qice = qice - dq
    qu = qu + dq
    theteu = tu * (p00 / p)**(0.2854 * (1. - 0.28 * qu)) * exp((3374.6525 / tu - 2.5403) * qu * (1. + 0.81 * qu))
  end subroutine

  ! Precipitation fallout over a layer (Ogura and Cho 1973 as Kain-Fritsch use it: condensate
  ! decays as exp(-rate dz / w)) and the vertical velocity squared at its top, with buoyancy,
  ! entrainment and condensate loading. qnewl/qnewi are consumed.
  subroutine fallout(qliq, qice, wtw, dz, buoyancy_term, entrainment_term, rate, qnewl, qnewi, &
                     qlout, qiout)
    real, intent(in) :: dz, buoyancy_term, entrainment_term, rate
    real, intent(inout) :: qliq, qice, wtw, qnewl, qnewi
    real, intent(out) :: qlout, qiout
    real :: qtot, qnew, w_top2, w_mean, decay, liquid_new, liquid_all, before, lost
    qtot = qliq + qice
    qnew = qnewl + qnewi
    w_top2 = max(0., wtw + buoyancy_term - entrainment_term - 2. * g * dz * 0.5 * (qtot + qnew) / 1.5)
    w_mean = 0.5 * (sqrt(wtw) + sqrt(w_top2))
    decay = rate * dz / w_mean
    liquid_new = qnewl / (qnew + 1.e-8)
    qtot = qtot + 0.6 * qnew         ! 60 % of fresh condensate can precipitate at once
    before = qtot
    liquid_all = (0.6 * qnewl + qliq) / (qtot + 1.e-8)
    qtot = qtot * exp(-decay)
    lost = before - qtot
    qlout = liquid_all * lost
    qiout = (1. - liquid_all) * lost
    wtw = wtw + buoyancy_term - entrainment_term - 2. * g * dz * 0.5 * (before + qtot - 0.2 * qnew) / 1.5
    if (abs(wtw) < 1.e-4) wtw = 1.e-4
    qliq = liquid_all * qtot + liquid_new * 0.4 * qnew
    qice = (1. - liquid_all) * qtot + (1. - liquid_new) * 0.4 * qnew
    qnewl = 0.
    qnewi = 0.
  end subroutine

  ! Fractional entrainment ee and detrainment ud of the Kain-Fritsch mixing, with eq the
  ! critical mixed fraction: integrals of a truncated Gaussian distribution of mixtures
  ! (the normal integral by Abramowitz and Stegun 26.2.16).
  subroutine mixing_rates(eq, ee, ud)
    real, intent(in) :: eq
    real, intent(out) :: ee, ud
    real, parameter :: sqrt2p = 2.506628, a1 = 0.4361836, a2 = -0.1201676, a3 = 0.9372980, &
                       pa = 0.33267, sigma = 0.166666667, norm = 0.202765151
    real :: y, ey, e45, t1, t2, c1, c2, outer, inner
    y = 6. * eq - 3.
    ey = exp(-y * y / 2.)
    e45 = exp(-4.5)
    t1 = 0.500498
    t2 = 1. / (1. + pa * abs(y))
    c1 = t1 * (a1 + t1 * (a2 + t1 * a3))
    c2 = t2 * (a1 + t2 * (a2 + t2 * a3))
    outer = sigma * (0.5 * (sqrt2p - e45 * c1 - ey * c2) + sigma * (e45 - ey))
    inner = sigma * (0.5 * (ey * c2 - e45 * c1) + sigma * (e45 - ey))
    if (y >= 0.) then
      ee = outer - e45 * eq * eq / 2.
      ud = inner - e45 * (0.5 + eq * eq / 2. - eq)
    else
      ee = inner - e45 * eq * eq / 2.
      ud = outer - e45 * (0.5 + eq * eq / 2. - eq)
    end if
    ee = ee / norm
    ud = ud / norm
  end subroutine

  ! Virtual temperature of a mixture of fraction f of environmental air into the updraft.
  real function mixture_tv(f, p, theta_e_env, theta_e_up, q_env, q_up, qliq, qice, t_start)
    real, intent(in) :: f, p, theta_e_env, theta_e_up, q_env, q_up, qliq, qice, t_start
    real :: t, q, ql, qi, qnew
    t = t_start
    q = f * q_env + (1. - f) * q_up
    ql = (1. - f) * qliq
    qi = (1. - f) * qice
    call moist_adjust(p, f * theta_e_env + (1. - f) * theta_e_up, t, q, ql, qi, qnew)
    mixture_tv = t * (1. + 0.608 * q - ql - qi)
  end function

  ! MSKF's downdraft of a deep cloud, before the closure: it starts at the level of free sink
  ! (LFS, 150 hPa above the source layer's top, below the equilibrium level) with a mass flux
  ! of (1 - precipitation efficiency) times the updraft's initial one, entrains on its way
  ! down to the source layer's top, is cooled by melting snow, then descends moist-
  ! adiabatically, sub-saturated by 20 % per km, to where it is warmer than the environment
  ! (LDB), detraining below the source layer. Its mass flux is scaled so that it evaporates no
  ! more than the updraft precipitates (Kain 2004 eq. 11); evaporation under 1 kg/s means no
  ! downdraft. Shallow clouds have none. Outputs dmf, der, ddr (kg/s, dmf and der <= 0), the
  ! source and base levels and the evaporation tder (kg/s).
  subroutine downdraft(nz, kind, t, p, q0, qes, tv0, dp, z0, kpbl, klcl, ltop, let, lc, umf, &
                       ppt_ice, peff, au0, trppt, dmf, der, ddr, thetad, qd, lfs, ldb, tder)
    integer, intent(in) :: nz, kind, kpbl, klcl, ltop, let, lc
    real, intent(in), dimension(nz) :: t, p, q0, qes, tv0, dp, z0, umf, ppt_ice
    real, intent(in) :: peff, au0, trppt
    real, intent(out), dimension(nz) :: dmf, der, ddr, thetad, qd
    integer, intent(out) :: lfs, ldb
    real, intent(out) :: tder
    real, dimension(nz) :: theted, qsd
    integer :: kstart, nk, nd, ldt, melting_level
    real :: tz, qss, rhbar, dptt, dmffrc, dpdd, melt, es, rhh, desdt, latent, dtmp, t1rh, qsrh, &
            tvd, ddinc

    dmf = 0.
    der = 0.
    ddr = 0.
    thetad = 0.
    qd = 0.
    tder = 0.
    lfs = 1
    ldb = 1
    if (kind /= 2) return
    kstart = kpbl + 1
    lfs = let - 1
    do nk = kstart + 1, nz
      if (p(kstart) - p(nk) > 150.e2) then
        lfs = min(nk, let - 1)
        exit
      end if
    end do
    if (p(kstart) - p(lfs) <= 50.e2) return

    theted(lfs) = environment_theta_e(p(lfs), t(lfs), q0(lfs))
    qd(lfs) = q0(lfs)
    call saturated_state(p(lfs), theted(lfs), tz, qss)
    dmf(lfs) = -(1. - peff) * au0 * p(lfs) / (rd * tz * (1. + 0.608 * qss))
    der(lfs) = dmf(lfs)
    rhbar = q0(lfs) / qes(lfs) * dp(lfs)
    dptt = dp(lfs)
    do nd = lfs - 1, kstart, -1
      der(nd) = der(lfs) * dp(nd) / dp(lfs)
      dmf(nd) = dmf(nd + 1) + der(nd)
      theted(nd) = (theted(nd + 1) * dmf(nd + 1) + environment_theta_e(p(nd), t(nd), q0(nd)) * der(nd)) / dmf(nd)
      qd(nd) = (qd(nd + 1) * dmf(nd + 1) + q0(nd) * der(nd)) / dmf(nd)
      dptt = dptt + dp(nd)
      rhbar = rhbar + q0(nd) / qes(nd) * dp(nd)
    end do
    rhbar = rhbar / dptt
    dmffrc = 2. * (1. - rhbar)

    ! Melting of the updraft's snow cools the downdraft when the source layer is below the
    ! highest level (up to the top) warmer than 0 C.
    melting_level = 0
    do nk = 1, ltop
      if (t(nk) > t00) melting_level = nk
    end do
    melt = 0.
    if (lc < melting_level) melt = 3.339e5 * sum(ppt_ice(klcl:ltop)) / (cp * umf(klcl))
    call saturated_state(p(kstart), theted(kstart), tz, qss)
    tz = tz - melt
    es = aliq * exp((bliq * tz - cliq) / (tz - dliq))
    qss = 0.622 * es / (p(kstart) - es)
    theted(kstart) = tz * (1.e5 / p(kstart))**(0.2854 * (1. - 0.28 * qss)) &
                     * exp((3374.6525 / tz - 2.5403) * qss * (1. + 0.81 * qss))

    ldt = min(lfs - 1, kstart - 1)
    dpdd = 0.
    ldb = 1
    do nd = ldt, 1, -1
      dpdd = dpdd + dp(nd)
      theted(nd) = theted(kstart)
      qd(nd) = qd(kstart)
      call saturated_state(p(nd), theted(nd), tz, qss)
      qsd(nd) = qss
      rhh = 1. - 0.2 / 1000. * (z0(kstart) - z0(nd))
      if (rhh < 1.) then
        desdt = (cliq - bliq * dliq) / ((tz - dliq) * (tz - dliq))
        latent = xlv0 - xlv1 * tz
        dtmp = latent * qss * (1. - rhh) / (cp + latent * rhh * qss * desdt)
        t1rh = tz + dtmp
        es = rhh * aliq * exp((bliq * t1rh - cliq) / (t1rh - dliq))
        qsrh = 0.622 * es / (p(nd) - es)
        if (qsrh < qd(nd)) then
          qsrh = qd(nd)
          t1rh = tz + (qss - qsrh) * latent / cp
        end if
        tz = t1rh
        qsd(nd) = qsrh
      end if
      tvd = tz * (1. + 0.608 * qsd(nd))
      thetad(nd) = tz * (1.e5 / p(nd))**(0.2854 * (1. - 0.28 * qsd(nd)))
      if (tvd > tv0(nd) .or. nd == 1) then
        ldb = nd
        exit
      end if
    end do
    if (p(ldb) - p(lfs) > 50.e2) then
      do nd = ldt, ldb, -1
        ddr(nd) = -dmf(kstart) * dp(nd) / dpdd
        der(nd) = 0.
        dmf(nd) = dmf(nd + 1) + ddr(nd)
        tder = tder + (qsd(nd) - qd(nd)) * ddr(nd)
        qd(nd) = qsd(nd)
      end do
    end if

    if (tder < 1.) then
      dmf = 0.
      der = 0.
      ddr = 0.
      tder = 0.
      ldb = lfs
      return
    end if
    ddinc = -dmffrc * umf(klcl) / dmf(kstart)
    if (tder * ddinc > trppt) ddinc = trppt / tder
    tder = tder * ddinc
    dmf(ldb:lfs) = dmf(ldb:lfs) * ddinc
    der(ldb:lfs) = der(ldb:lfs) * ddinc
    ddr(ldb:lfs) = ddr(ldb:lfs) * ddinc
    if (ldb > 1) then
      dmf(:ldb - 1) = 0.
      der(:ldb - 1) = 0.
      ddr(:ldb - 1) = 0.
    end if
    dmf(lfs + 1:) = 0.
    der(lfs + 1:) = 0.
    ddr(lfs + 1:) = 0.
  end subroutine

  ! The tendencies of theta, vapour, and detrained liquid and ice (per second) that the drafts
  ! (mass fluxes in kg/s; gdxsq = g / DX**2) give at the start of MSKF's closure: detrainment of
  ! updraft and downdraft air, entrainment of environmental air, and the compensating
  ! environmental motion that conserves mass, in the scheme's upstream flux form. MSKF
  ! integrates the same equations over its time scale and scales the drafts until 90 % of the
  ! buoyant energy is gone; this is their first step, before that scaling. Levels above ltop
  ! are zero.
  subroutine initial_tendencies(nz, ltop, t, p, q0, dp, tu, qdt, qliq, qice, dilfrc, uer, udr, &
                                der, ddr, thetad, qd, gdxsq, dthdt, dqdt, dqldt, dqidt)
    integer, intent(in) :: nz, ltop
    real, intent(in), dimension(nz) :: t, p, q0, dp, tu, qdt, qliq, qice, dilfrc, uer, udr, der, &
                                       ddr, thetad, qd
    real, intent(in) :: gdxsq
    real, intent(out), dimension(nz) :: dthdt, dqdt, dqldt, dqidt
    real, dimension(nz) :: theta0, thetau, net_up
    real :: flux, th_flux, q_flux
    integer :: nk

    dthdt = 0.
    dqdt = 0.
    dqldt = 0.
    dqidt = 0.
    do nk = 1, ltop
      theta0(nk) = t(nk) * (1.e5 / p(nk))**(0.2854 * (1. - 0.28 * q0(nk)))
      thetau(nk) = tu(nk) * (1.e5 / p(nk))**(0.2854 * (1. - 0.28 * qdt(nk)))
      net_up(nk) = uer(nk) - der(nk) - udr(nk) - ddr(nk)   ! net inflow into the drafts
      dthdt(nk) = udr(nk) * thetau(nk) + ddr(nk) * thetad(nk) - (uer(nk) - der(nk)) * theta0(nk)
      dqdt(nk) = udr(nk) * qdt(nk) + ddr(nk) * qd(nk) - (uer(nk) - der(nk)) * q0(nk)
      ! (the updraft's condensate before its dilution at this level, as it detrains)
      dqldt(nk) = udr(nk) * qliq(nk) * dilfrc(nk)
      dqidt(nk) = udr(nk) * qice(nk) * dilfrc(nk)
    end do
    ! The environment moves down (flux > 0) or up through the interface below each level,
    ! carrying the values of the level it leaves.
    flux = 0.
    do nk = 2, ltop
      flux = flux + net_up(nk - 1)
      if (flux > 0.) then
        th_flux = flux * theta0(nk)
        q_flux = flux * q0(nk)
      else
        th_flux = flux * theta0(nk - 1)
        q_flux = flux * q0(nk - 1)
      end if
      dthdt(nk) = dthdt(nk) - th_flux
      dqdt(nk) = dqdt(nk) - q_flux
      dthdt(nk - 1) = dthdt(nk - 1) + th_flux
      dqdt(nk - 1) = dqdt(nk - 1) + q_flux
    end do
    dthdt(:ltop) = dthdt(:ltop) * gdxsq / dp(:ltop)
    dqdt(:ltop) = dqdt(:ltop) * gdxsq / dp(:ltop)
    dqldt(:ltop) = dqldt(:ltop) * gdxsq / dp(:ltop)
    dqidt(:ltop) = dqidt(:ltop) * gdxsq / dp(:ltop)
  end subroutine

  ! One column (after build_tables). lev(:, f): mass flux, entrainment and detrainment per
  ! unit cloud-base mass flux, updraft virtual-temperature excess (K), condensate (kg/kg),
  ! precipitation production per unit cloud-base mass flux, vertical velocity (m/s), 1 in
  ! cloud (LCL to top); the downdraft's mass flux, entrainment and detrainment per unit
  ! cloud-base updraft mass flux; the initial tendencies of theta (K/s), vapour, and detrained
  ! liquid and ice (kg/kg/s). col: kind (0 none, 1 shallow, 2 deep), LCL level, top level,
  ! equilibrium level, source-layer base level, LCL height (m), cloud depth (m), CHMIN (m),
  ! dilute buoyant energy (J/kg), time scale (s, before rounding to steps), advective time
  ! (s), sub-cloud velocity scale (m/s), precipitation efficiency, source-layer depth (Pa),
  ! downdraft source and base levels, and the precipitation production and downdraft
  ! evaporation per unit cloud-base mass flux.
  subroutine updraft_column(nz, t, qv, p, rho, dz, w0, u, v, hfx, ust, pblh, zol, dx, lev, col)
    integer, intent(in) :: nz
    real, intent(in) :: t(nz), qv(nz), p(nz), rho(nz), dz(nz), w0(nz), u(nz), v(nz)
    real, intent(in) :: hfx, ust, pblh, zol, dx
    real, intent(out) :: lev(nz, N_LEVEL_FIELDS), col(N_COLUMN_FIELDS)

    real, dimension(nz) :: q0, qes, tv0, dp, z0, dza, cldhgt, tu, tvu, tvqu, qu, qliq, qice, theteu, &
                           theta_e_env, umf, uer, udr, dilfrc, ppt, ppt_ice, wu, fallout_fraction, &
                           ice_fallout_fraction, dmf, der, ddr, qdt, thetad, qd
    integer :: base_levels(nz)
    integer :: k, nk, nk1, kk, n_bases, nu, nu_shallow, lc, kpbl, klcl, kb, ltop, let, l5, llfc
    integer :: kind, lfs, ldb
    real :: es, scale, p_next, dpthmx, tmix, qmix, zmix, pmix, tlcl, tvlcl, zlcl, dlp, &
            tenv, qenv, tven, wkl, dtlcl, wlcl, plcl, rholcl, rad, vmflcl, upold, upnew, wtw, &
            abe, ee1, ud1, ee2, ud2, rei, dilbe, qnewl, qnewi, qlout, qiout, frc, t_glaciation, &
            be, buoyancy_term, dzz, rate, tu95, tu10, eqfrc, chmin, rh_sum, esat, rh, dptt, &
            dumfdp, wspd_lcl, wspd_mid, wspd_top, vconv, tadvec, timec, wst, thetav, sclvel, &
            frc2, vws, pef, cbh, rcbh, pefcbh, peff, trppt, tder
    logical :: stop_rh

    lev = 0.
    col = 0.
    scale = 1.
    if (dx < 24.999e3) scale = 1. + log(25.e3 / dx)
    rate = autoconversion / scale

    l5 = 1
    llfc = 1
    do k = 1, nz
      es = aliq * exp((bliq * t(k) - cliq) / (t(k) - dliq))
      qes(k) = 0.622 * es / (p(k) - es)
      q0(k) = max(1.e-6, min(qes(k), qv(k)))
      tv0(k) = t(k) * (1. + 0.608 * q0(k))
      dp(k) = rho(k) * g * dz(k)
      if (p(k) >= 0.5 * p(1)) l5 = k
      if (p(k) >= p(1) - 3.e4) llfc = k
    end do
    z0(1) = 0.5 * dz(1)
    do k = 2, nz
      z0(k) = z0(k - 1) + 0.5 * (dz(k) + dz(k - 1))
      dza(k - 1) = z0(k) - z0(k - 1)
    end do
    dza(nz) = 0.

    ! Candidate source-layer bases: the lowest level, then every 15 hPa.
    n_bases = 1
    base_levels(1) = 1
    p_next = p(1) - 15.e2
    do k = 2, llfc
      if (p(k) < p_next) then
        n_bases = n_bases + 1
        base_levels(n_bases) = k
        p_next = p_next - 15.e2
      end if
    end do

    cldhgt = 0.
    kind = 0
    nu = 0
    nu_shallow = 0
    sources: do
      nu = nu + 1
      if (nu > n_bases) then
        if (kind /= 1) return
        ! No deep cloud anywhere: shallow convection from the deepest remembered cloud.
        nu_shallow = 0
        do kk = 1, n_bases
          if (cldhgt(base_levels(kk)) > 0.) then
            if (nu_shallow == 0) then
              nu_shallow = kk
            else if (cldhgt(base_levels(kk)) > cldhgt(base_levels(nu_shallow))) then
              nu_shallow = kk
            end if
          end if
        end do
        if (nu_shallow == 0) return
        nu = nu_shallow
      end if
      lc = base_levels(nu)

      ! The layer from lc up, at least dpmin deep, mixed by mass.
      dpthmx = 0.
      kpbl = lc - 1
      do while (dpthmx <= dpmin .and. kpbl < nz)
        kpbl = kpbl + 1
        dpthmx = dpthmx + dp(kpbl)
      end do
      if (dpthmx < dpmin) return
      tmix = sum(dp(lc:kpbl) * t(lc:kpbl)) / dpthmx
      qmix = sum(dp(lc:kpbl) * q0(lc:kpbl)) / dpthmx
      zmix = sum(dp(lc:kpbl) * z0(lc:kpbl)) / dpthmx
      pmix = sum(dp(lc:kpbl) * p(lc:kpbl)) / dpthmx

      tlcl = min(lcl_temperature(tmix, pmix, qmix), tmix)
      tvlcl = tlcl * (1. + 0.608 * qmix)
      zlcl = zmix + (tmix - tlcl) * cp / g
      if (zlcl > z0(nz)) return
      klcl = lc
      do while (zlcl > z0(klcl))
        klcl = klcl + 1
      end do
      kb = max(klcl - 1, 1)
      dlp = 0.
      if (kb < klcl) dlp = (zlcl - z0(kb)) / (z0(klcl) - z0(kb))
      tenv = t(kb) + (t(klcl) - t(kb)) * dlp
      qenv = q0(kb) + (q0(klcl) - q0(kb)) * dlp
      tven = tenv * (1. + 0.608 * qenv)

      ! Trigger: the grid-scale ascent at the LCL (above its threshold, Kain 2004 eq. 1-2,
      ! scaled up at DX >= 25 km) warms the parcel.
      wkl = w0(kb) + (w0(klcl) - w0(kb)) * dlp
      if (dx >= 25.e3) wkl = wkl * dx / 25.e3
      wkl = wkl - 0.02 * min(zlcl, 2.e3) / 2.e3
      dtlcl = 0.
      if (wkl >= 1.e-4) dtlcl = 4.64 * wkl**0.33
      if (tlcl + dtlcl < tenv) cycle sources

      ! The updraft from the LCL.
      wlcl = 1.
      if (dtlcl > 1.e-4) wlcl = min(1. + 0.5 * sqrt(2. * g * dtlcl * 500. / tven), 3.)
      plcl = p(kb) + (p(klcl) - p(kb)) * dlp
      rholcl = plcl / (rd * tvlcl)
      rad = min(4000., max(500., max(z0(kpbl), zlcl)))  ! cloud radius from the LCL height
      vmflcl = rholcl * 0.01 * dx * dx
      wtw = wlcl * wlcl
      umf = 0.
      uer = 0.
      udr = 0.
      ppt = 0.
      fallout_fraction = 0.   ! condensate falling out over each layer, per unit mass flux
      ice_fallout_fraction = 0.
      ppt_ice = 0.
      wu = 0.
      tvqu = 0.
      qdt = 0.
      qliq = 0.
      qice = 0.
      dilfrc = 1.
      umf(kb) = vmflcl
      upold = vmflcl
      upnew = vmflcl
      wu(kb) = wlcl
      tu(kb) = tlcl
      tvu(kb) = tvlcl
      qu(kb) = qmix
      theteu(kb) = environment_theta_e(pmix, tmix, qmix)
      let = klcl
      abe = 0.
      ee1 = 1.
      ud1 = 0.
      rei = 0.
      dilbe = 0.
      t_glaciation = ttfrz
      ltop = nz
      rising: do nk = kb, nz - 1
        nk1 = nk + 1
        tu(nk1) = t(nk1)
        theteu(nk1) = theteu(nk)
        qu(nk1) = qu(nk)
        qliq(nk1) = qliq(nk)
        qice(nk1) = qice(nk)
        call moist_adjust(p(nk1), theteu(nk1), tu(nk1), qu(nk1), qliq(nk1), qice(nk1), qnewl)
        qnewi = 0.
        if (tu(nk1) <= ttfrz) then
          ! Glaciation, linear in temperature between ttfrz and tbfrz: the fraction of the
          ! remaining liquid that freezes over this layer.
          frc = 1.
          if (tu(nk1) > tbfrz) then
            t_glaciation = min(t_glaciation, ttfrz)
            frc = (t_glaciation - tu(nk1)) / (t_glaciation - tbfrz)
          end if
          t_glaciation = tu(nk1)
          qnewi = qnewi + qnewl * frc
          call freeze(tu(nk1), p(nk1), theteu(nk1), qu(nk1), (qliq(nk1) + qnewl) * frc, &
                      qice(nk1))
          qnewl = qnewl - qnewl * frc
          qice(nk1) = qice(nk1) + qliq(nk1) * frc
          qliq(nk1) = qliq(nk1) - qliq(nk1) * frc
        end if
        tvu(nk1) = tu(nk1) * (1. + 0.608 * qu(nk1))
        if (nk == kb) then
          be = (tvlcl + tvu(nk1)) / (tven + tv0(nk1)) - 1.
          dzz = z0(nk1) - zlcl
        else
          be = (tvu(nk) + tvu(nk1)) / (tv0(nk) + tv0(nk1)) - 1.
          dzz = dza(nk)
        end if
        buoyancy_term = 2. * dzz * g * be / 1.5
        call fallout(qliq(nk1), qice(nk1), wtw, dzz, buoyancy_term, 2. * rei * wtw / upold, rate, &
                     qnewl, qnewi, qlout, qiout)
        if (wtw < 1.e-3) then
          ltop = nk
          exit rising
        end if
        wu(nk1) = sqrt(wtw)
        theta_e_env(nk1) = environment_theta_e(p(nk1), t(nk1), q0(nk1))
        rei = vmflcl * dp(nk1) * 0.03 * scale / rad   ! scale-aware Tokioka entrainment
        tvqu(nk1) = tu(nk1) * (1. + 0.608 * qu(nk1) - qliq(nk1) - qice(nk1))
        if (nk == kb) then
          dilbe = ((tvlcl + tvqu(nk1)) / (tven + tv0(nk1)) - 1.) * dzz
        else
          dilbe = ((tvqu(nk) + tvqu(nk1)) / (tv0(nk) + tv0(nk1)) - 1.) * dzz
        end if
        if (dilbe > 0.) abe = abe + dilbe * g

        ! Buoyancy sorting: which mixtures of updraft and environmental air stay buoyant.
        if (tvqu(nk1) <= tv0(nk1)) then
          ee2 = 0.5
          ud2 = 1.
        else
          let = nk1
          tu95 = mixture_tv(0.95, p(nk1), theta_e_env(nk1), theteu(nk1), q0(nk1), qu(nk1), &
                            qliq(nk1), qice(nk1), tvqu(nk1))
          if (tu95 > tv0(nk1)) then
            ee2 = 1.
            ud2 = 0.
          else
            tu10 = mixture_tv(0.10, p(nk1), theta_e_env(nk1), theteu(nk1), q0(nk1), qu(nk1), &
                              qliq(nk1), qice(nk1), tvqu(nk1))
            if (abs(tu10 - tvqu(nk1)) < 1.e-3) then
              ee2 = 1.
              ud2 = 0.
            else
              eqfrc = min(1., max(0., (tv0(nk1) - tvqu(nk1)) * 0.10 / (tu10 - tvqu(nk1))))
              if (eqfrc == 1.) then
                ee2 = 1.
                ud2 = 0.
              else if (eqfrc == 0.) then
                ee2 = 0.
                ud2 = 1.
              else
                call mixing_rates(eqfrc, ee2, ud2)
              end if
            end if
          end if
        end if
        ee2 = max(ee2, 0.5)
        ud2 = 1.5 * ud2
        uer(nk1) = 0.5 * rei * (ee1 + ee2)
        udr(nk1) = 0.5 * rei * (ud1 + ud2)
        if (umf(nk) - udr(nk1) < 10.) then
          ! Everything detrains: the cloud ends at the level below.
          if (dilbe > 0.) abe = abe - dilbe * g
          let = nk
          ltop = nk
          exit rising
        end if
        ee1 = ee2
        ud1 = ud2
        upold = umf(nk) - udr(nk1)
        upnew = upold + uer(nk1)
        umf(nk1) = upnew
        dilfrc(nk1) = upnew / upold
        qdt(nk1) = qu(nk1)   ! the detraining air's vapour, before it mixes with entrained air
        qu(nk1) = (upold * qu(nk1) + uer(nk1) * q0(nk1)) / upnew
        theteu(nk1) = (theteu(nk1) * upold + theta_e_env(nk1) * uer(nk1)) / upnew
        qliq(nk1) = qliq(nk1) * upold / upnew
        qice(nk1) = qice(nk1) * upold / upnew
        ppt(nk1) = (qlout + qiout) * umf(nk)
        ppt_ice(nk1) = qiout * umf(nk)
        ice_fallout_fraction(nk1) = qiout
        fallout_fraction(nk1) = qlout + qiout
        if (nk1 <= kpbl) uer(nk1) = uer(nk1) + vmflcl * dp(nk1) / dpthmx
      end do rising

      ! Deep, shallow or no cloud from this layer.
      cldhgt(lc) = z0(ltop) - zlcl
      if (tlcl > 293.) then
        chmin = 4.e3
      else if (tlcl >= 273.) then
        chmin = 2.e3 + 100. * (tlcl - 273.)
      else
        chmin = 2.e3
      end if
      ! No cloud in a saturated environment (mean RH >= 1.01 from below the LCL to above the
      ! top, over ice below freezing; any level under 0.99 above the LCL ends the test).
      rh_sum = 0.
      stop_rh = .false.
      do nk = max(kb - 1, 1), min(ltop + 1, nz)
        if (t(nk) <= 273.16) then
          esat = 611.2 * exp(21.87 * (t(nk) - 273.16) / (t(nk) - 7.66))
        else
          esat = 611.2 * exp(17.67 * (t(nk) - 273.16) / (243.5 + t(nk) - 273.16))
        end if
        rh = q0(nk) / (0.622 * esat / (p(nk) - esat))
        if (nk > kb .and. rh < 0.99) then
          stop_rh = .true.
          exit
        end if
        rh_sum = rh_sum + rh
      end do
      if (stop_rh) then
        rh_sum = 0.
      else
        rh_sum = rh_sum / real(ltop - kb + 3)
      end if
      if (ltop <= klcl .or. ltop <= kpbl .or. let + 1 <= kpbl .or. rh_sum >= 1.01) then
        cldhgt(lc) = 0.
      else if (cldhgt(lc) > chmin .and. abe > 1.) then
        kind = 2
        exit sources
      else
        kind = 1
        if (nu == nu_shallow) exit sources
      end if
    end do sources

    ! Mass flux to zero between the equilibrium level and the top (shallow clouds: from the
    ! top of the source layer or the LCL).
    if (kind == 1) let = max(kpbl, klcl)
    if (let == ltop) then
      udr(ltop) = umf(ltop) + udr(ltop) - uer(ltop)
      uer(ltop) = 0.
      umf(ltop) = 0.
    else
      dptt = sum(dp(let + 1:ltop))
      dumfdp = umf(let) / dptt
      do nk = let + 1, ltop
        if (nk == ltop) then
          udr(nk) = umf(nk - 1)
          uer(nk) = 0.
          umf(nk) = 0.
        else
          umf(nk) = umf(nk - 1) - dp(nk) * dumfdp
          uer(nk) = umf(nk) * (1. - 1. / dilfrc(nk))
          udr(nk) = umf(nk - 1) - umf(nk) + uer(nk)
        end if
        if (nk >= let + 2) then
          ppt(nk) = umf(nk - 1) * fallout_fraction(nk)
          ppt_ice(nk) = umf(nk - 1) * ice_fallout_fraction(nk)
        end if
      end do
    end if
    ! Below the LCL: the source layer feeds the updraft.
    do nk = lc, kb
      if (nk == lc) then
        umf(nk) = vmflcl * dp(nk) / dpthmx
        uer(nk) = umf(nk)
      else if (nk <= kpbl) then
        uer(nk) = vmflcl * dp(nk) / dpthmx
        umf(nk) = umf(nk - 1) + uer(nk)
      else
        umf(nk) = vmflcl
        uer(nk) = 0.
      end if
      udr(nk) = 0.
      ppt(nk) = 0.
      ppt_ice(nk) = 0.
      qliq(nk) = 0.
      qice(nk) = 0.
    end do

    lev(:, 1) = umf / vmflcl
    lev(:, 2) = uer / vmflcl
    lev(:, 3) = udr / vmflcl
    do nk = kb + 1, ltop
      lev(nk, 4) = tvqu(nk) - tv0(nk)
      lev(nk, 5) = qliq(nk) + qice(nk)
      lev(nk, 7) = wu(nk)
    end do
    lev(:, 6) = ppt / vmflcl
    lev(klcl:ltop, 8) = 1.

    ! Time scales: advective (DX over the mean wind at the LCL and mid-troposphere), and the
    ! dynamic one from the cloud depth, the sub-cloud velocity scale and the buoyant energy.
    wspd_lcl = sqrt(u(klcl)**2 + v(klcl)**2)
    wspd_mid = sqrt(u(l5)**2 + v(l5)**2)
    wspd_top = sqrt(u(ltop)**2 + v(ltop)**2)
    vconv = max(0.5 * (wspd_lcl + wspd_mid), 1.e-3)
    tadvec = dx / vconv
    thetav = t(1) * (1.e5 / p(1))**(rd / cp) * (1. + q0(1) * 0.622)
    wst = (g * max(pblh, 1.) * max(0., hfx / (p(1) / rd / t(1)) / cp) / thetav)**0.3333
    sclvel = (wst**3 / max(pblh, 1.) * max(zlcl, z0(kpbl)))**0.333
    frc2 = 3.8 * ust * ust
    if (zol <= 0.) frc2 = frc2 + 0.22 * sclvel * sclvel + (-zol)**(2. / 3.) * 1.9 * ust * ust
    sclvel = max(sqrt(frc2), 0.1)
    if (abe <= 0.) abe = 1.
    timec = max(chmin, cldhgt(lc)) * scale / (0.03 * sclvel * abe)**0.3333
    timec = max(tadvec, timec)
    ! Precipitation efficiency: the mean of the shear and cloud-base-height estimates.
    vws = 1.e3 * sqrt((u(ltop) - u(klcl))**2 + (v(ltop) - v(klcl))**2) / (z0(ltop) - z0(klcl))
    if (wspd_top <= wspd_lcl) vws = -vws
    pef = min(max(1.591 + vws * (-.639 + vws * (9.53e-2 - vws * 4.96e-3)), .2), .9)
    cbh = (zlcl - z0(1)) * 3.281e-3
    if (cbh < 3.) then
      rcbh = .02
    else
      rcbh = .96729352 + cbh * (-.70034167 + cbh * (.162179896 + cbh * (-1.2569798e-2 &
             + cbh * (4.2772e-4 - cbh * 5.44e-6))))
    end if
    if (cbh > 25.) rcbh = 2.4
    pefcbh = min(1. / (1. + rcbh), .9)
    peff = 0.5 * (pef + pefcbh)

    trppt = sum(ppt)
    call downdraft(nz, kind, t, p, q0, qes, tv0, dp, z0, kpbl, klcl, ltop, let, lc, umf, ppt_ice, &
                   peff, 0.01 * dx * dx, trppt, dmf, der, ddr, thetad, qd, lfs, ldb, tder)
    lev(:, 9) = dmf / vmflcl
    lev(:, 10) = der / vmflcl
    lev(:, 11) = ddr / vmflcl
    call initial_tendencies(nz, ltop, t, p, q0, dp, tu, qdt, qliq, qice, dilfrc, uer, udr, der, &
                            ddr, thetad, qd, g / (dx * dx), lev(:, 12), lev(:, 13), lev(:, 14), &
                            lev(:, 15))

    col = [real(kind), real(klcl), real(ltop), real(let), real(lc), zlcl, cldhgt(lc), chmin, &
           abe, timec, tadvec, sclvel, peff, dpthmx, real(lfs), real(ldb), trppt / vmflcl, &
           tder / vmflcl]
  end subroutine

end module kf_updraft


! The Python entry point (f2py): every column of a batch, inputs and outputs (level, column).
! status 1: the caller's output layout (nlf, ncf) is not this module's.
subroutine updraft_columns(ncol, nz, nlf, ncf, t, qv, p, rho, dz, w0, u, v, hfx, ust, pblh, zol, &
                           dx, lev, col, status)
  use kf_updraft, only: updraft_column, build_tables, N_LEVEL_FIELDS, N_COLUMN_FIELDS
  implicit none
  integer, intent(in) :: ncol, nz, nlf, ncf
  real, intent(in), dimension(nz, ncol) :: t, qv, p, rho, dz, w0, u, v
  real, intent(in), dimension(ncol) :: hfx, ust, pblh, zol, dx
  real, intent(out) :: lev(nz, nlf, ncol), col(ncf, ncol)
  integer, intent(out) :: status
  integer :: i
  lev = 0.
  col = 0.
  status = 0
  if (nlf /= N_LEVEL_FIELDS .or. ncf /= N_COLUMN_FIELDS) then
    status = 1
    return
  end if
  call build_tables()
  do i = 1, ncol
    call updraft_column(nz, t(:, i), qv(:, i), p(:, i), rho(:, i), dz(:, i), w0(:, i), u(:, i), &
                        v(:, i), hfx(i), ust(i), pblh(i), zol(i), dx(i), lev(:, :, i), col(:, i))
  end do
end subroutine
