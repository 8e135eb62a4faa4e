!> Moist thermodynamics, elemental (loops over columns vectorise): saturation over liquid
!! and ice, dew point and LCL temperature, Bolton's equivalent potential temperature, the
!! saturated moist adiabat (Newton's method from a guess), and the saturation adjustment of
!! an updraft parcel or mixture. No state.
module kernel_thermo
  use kernel_constants
  use kernel_math
  implicit none
  private
  public :: es_liquid, es_ice, qsat, dew_point, lcl_temperature, theta_e, theta_e_saturated, &
            saturated_temperature, saturation_adjust

contains

  !> Saturation vapour pressure over liquid water (Pa), Bolton (1980) eq. 10 with WRF's
  !! SVP constants.
  elemental real(rk) function es_liquid(t)
    real(rk), intent(in) :: t
    es_liquid = 1000.0 * svp1 * kexp(svp2 * (t - svpt0) / (t - svp3))
  end function

  !> Saturation vapour pressure over ice (Pa), Teten form.
  elemental real(rk) function es_ice(t)
    real(rk), intent(in) :: t
    es_ice = ice_a * kexp(ice_b * (t - t00) / (t - ice_d))
  end function

  !> Saturation mixing ratio for vapour pressure e at pressure p.
  elemental real(rk) function qsat(e, p)
    real(rk), intent(in) :: e, p
    qsat = ep2 * e / (p - e)
  end function

  !> Dew point (K) of vapour pressure e (Pa): Bolton's eq. 10 solved for T.
  elemental real(rk) function dew_point(e)
    real(rk), intent(in) :: e
    real(rk) :: lg
    lg = klog(e / (1000.0 * svp1))
    dew_point = (svp2 * svpt0 - svp3 * lg) / (svp2 - lg)
  end function

  !> Temperature at the LCL of air at t with dew point td (fit in kernel_constants).
  elemental real(rk) function lcl_temperature(t, td)
    real(rk), intent(in) :: t, td
    lcl_temperature = td - (lcl_a + lcl_b * (td - t00) - lcl_c * (t - t00)) * (t - td)
  end function

  !> Equivalent potential temperature (K) of air at p, t with vapour q, T_L from the dew
  !! point (Bolton 1980, eq. 43); lnp = ln(p1000 / p).
  elemental real(rk) function theta_e(p, lnp, t, q)
    real(rk), intent(in) :: p, lnp, t, q
    real(rk) :: qq, tl
    qq = max(q, 1.0e-10)
    tl = lcl_temperature(t, dew_point(max(qq * p / (ep2 + qq), 1.0e-3)))
    theta_e = t * kexp(te_a * (1.0 - te_b * qq) * lnp + (te_c1 / tl - te_c2) * qq * (1.0 + te_d * qq))
  end function

  !> Equivalent potential temperature of air at t with vapour q taken as saturated (T_L = T).
  elemental real(rk) function theta_e_saturated(lnp, t, q)
    real(rk), intent(in) :: lnp, t, q
    theta_e_saturated = t * kexp(te_a * (1.0 - te_b * q) * lnp + (te_c1 / t - te_c2) * q * (1.0 + te_d * q))
  end function

  !> Temperature of saturated air at p whose theta_e is te: the moist adiabat (Bolton's eq.
  !! 43 with q = q_s(T), T_L = T) by three Newton steps from the guess t0 (within a few K).
  elemental real(rk) function saturated_temperature(te, p, lnp, t0) result(t)
    real(rk), intent(in) :: te, p, lnp, t0
    t = newton_step(t0, te, p, lnp)
    t = newton_step(t, te, p, lnp)
    t = newton_step(t, te, p, lnp)
  end function

  !> One Newton step towards the saturated temperature with theta_e te at p.
  elemental real(rk) function newton_step(t0, te, p, lnp) result(t)
    real(rk), intent(in) :: t0, te, p, lnp
    real(rk) :: tt, es, qs, tes, dqdt, dlndt
    tt = max(min(t0, 350.0), 120.0)
    es = min(es_liquid(tt), 0.5 * p)
    qs = qsat(es, p)
    tes = theta_e_saturated(lnp, tt, qs)
    dqdt = qs * p / (p - es) * svp2 * (svpt0 - svp3) / (tt - svp3) ** 2
    dlndt = 1.0 / tt - te_a * te_b * lnp * dqdt - te_c1 / tt ** 2 * qs * (1.0 + te_d * qs) &
            + (te_c1 / tt - te_c2) * (1.0 + 2.0 * te_d * qs) * dqdt
    t = tt - (tes - te) / (tes * max(dlndt, 1.0e-4))
  end function

  !> Saturation adjustment of air with theta_e te at p, from the guess t0 of its temperature
  !! (a lifted parcel or an updraft-
  !! environment mixture; the Kain-Fritsch approach, measured against MSKF): at the
  !! saturated temperature, excess vapour condenses as new liquid (new_l); a deficit is met
  !! by evaporating liquid; if the liquid does not suffice, the air is subsaturated and
  !! warmer (linearised, T = T_s + L_v (q_s - q) / c_pm), and its ice sublimates towards ice
  !! saturation, cooling it. Branch-free.
  elemental subroutine saturation_adjust(te, p, lnp, t0, t, qv, ql, qi, new_l)
    real(rk), intent(in) :: te, p, lnp, t0
    real(rk), intent(out) :: t, new_l
    real(rk), intent(inout) :: qv, ql, qi
    real(rk) :: ts, qs, d, evap, short, wet, tsub, qsi, sub, lsub
    ts = saturated_temperature(te, p, lnp, t0)
    qs = qsat(min(es_liquid(ts), 0.5 * p), p)
    d = qv - qs
    new_l = max(d, 0.0)
    evap = min(max(-d, 0.0), ql)           ! liquid evaporated towards saturation
    short = max(-d, 0.0) - evap            ! deficit left: subsaturated air
    wet = at_least(0.0, short)
    ql = ql - evap
    qv = wet * qs + (1.0 - wet) * (qv + evap)
    tsub = ts + (xlv0 - xlv1 * ts) * (qs - qv) / (cp * (1.0 + 0.89 * qv))
    qsi = qsat(min(es_ice(tsub), 0.5 * p), p)
    lsub = xls0 - xls1 * tsub
    sub = (1.0 - wet) * min(qi, max(qsi - qv, 0.0) &
          / (1.0 + lsub / cp * qsi * ice_b * (t00 - ice_d) / (tsub - ice_d) ** 2))
    qi = qi - sub
    qv = qv + sub
    t = wet * ts + (1.0 - wet) * (tsub - lsub * sub / cp)
  end subroutine
end module kernel_thermo
