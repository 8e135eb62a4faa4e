"""Reference convection scheme: the labels of the synthetic training data.

A small convective parameterisation of this project's own design, a *relaxed moist
adjustment*. It is not a copy of any WRF scheme; it gives the synthetic data realistic
structure (heating aloft, drying, rain equal to the column moisture sink, deep/shallow
regimes, hold times) with exactly known budgets. Per column, vectorised over columns:

1. **Source parcel.** Mass-weighted mean theta and vapour of the lowest 50 hPa; lifting
   condensation level from Bolton's (1980) formulas.
2. **Trigger.** The grid-scale running-mean ascent at the LCL, ``w_lcl`` (from W0AVG), plus a
   boundary-layer thermal velocity ``0.08 w*`` (``w*`` the convective velocity scale from HFX
   and PBLH) gives the parcel a bounded temperature kick
   ``dT = 2 K * tanh((w_lcl + 0.08 w* - w_c) / 0.1 m s-1)``. The threshold
   ``w_c = 0.05 m s-1 * sqrt(25 km / DX)`` rises at fine grid spacing, where resolved ascent is
   stronger. Deep convection needs grid-scale ascent (``w_lcl > w_c``); thermals alone only
   support shallow clouds.
3. **Moist ascent.** From the LCL the parcel follows the pseudo-adiabat (integrated in
   pressure). The level of free convection is the first level within 150 hPa above the LCL
   where the parcel's virtual temperature exceeds the environment's; the cloud runs from the
   LCL to the top of the buoyant layer starting there, provided the inhibition between LCL
   and LFC is under 100 J kg-1. CAPE is the buoyancy integral over that layer.
4. **Classification.** Deep: cloud depth >= 3 km and CAPE >= 100 J kg-1 with grid-scale
   ascent. Shallow: any other triggered cloud, its top capped 2 km above the base. Otherwise
   the column is inactive and every output is zero.
5. **Deep convection** relaxes the cloud layer toward a diluted moist adiabat,
   ``T_ref = T + 0.1 (T_parcel - T)``, over the time scale
   ``tau = 1200 s * (DX / 5 km)^0.25 * (1000 J kg-1 / max(CAPE, 250 J kg-1))^0.25``, clipped to
   600-3600 s and rounded to whole time steps. The heating gives the condensation rate
   ``C = sum(c_p dT/dt rho dz) / L_v``; vapour is removed in proportion to the vapour mixing
   ratio from the surface to the cloud top, with the same total C. A tenth of C is detrained
   as cloud water/ice at the top two cloud levels (ice below 258 K). Falling rain evaporates
   under cloud base (fraction 0.2 (1 - RH)), cooling and moistening that layer.
   Precipitation is what is left: ``P = C - detrained - evaporated``, so ``P`` equals the
   column moisture sink ``-sum((RQV + RQC + RQI) rho dz)`` exactly.
6. **Shallow convection** moves vapour from the sub-cloud and lower cloud layer to the cloud
   top: a flux ``F = 2e-5 kg m-2 s-1 (1 + HFX / 200 W m-2)`` is removed below, 70 % of it is
   returned as vapour and 30 % as cloud water at the top levels. Latent heat is released where
   vapour condenses and absorbed where it re-evaporates, so the column warms below and cools
   aloft; there is no surface rain. The hold time is CUDT * 60 s, as WRF expects of a shallow
   column.
7. **Momentum and diagnostics.** An updraft mass flux M(z) (cloud-base value from the
   condensation rate) transports cloud-base momentum in flux form, so the column momentum
   is conserved; its vertical derivative gives the entrainment/detrainment rates, and a
   downdraft of 0.3 M below the cloud base gives the downdraft ones. Cloud fractions
   (deep 0.01-0.6, shallow 0.01-0.2) follow the mass-flux shape; convective cloud water/ice
   is the updraft's residual condensate split by temperature.

Inputs are (column, level) arrays with level 0 at the surface: T (K), QV (kg kg-1), P (Pa),
PI (Exner), RHO (kg m-3), DZ (m), Z (m above ground, mass levels), U, V (m s-1, mass points),
W0AVG (m s-1); per column HFX (W m-2), PBLH (m); scalars DX (m), DT (s), CUDT (min).
Outputs are WRF's cumulus fields, per second and uncoupled, PRATEC in mm s-1, NCA in s.
"""

from __future__ import annotations

import numpy as np

from emulator import constants as c
from emulator.derive import saturation_mixing_ratio

SOURCE_DEPTH = 5000.0  # Pa
LFC_SEARCH = 15000.0  # Pa above the LCL
CIN_MAX = 100.0  # J kg-1 between LCL and LFC
DEEP_MIN_DEPTH = 3000.0  # m
DEEP_MIN_CAPE = 100.0  # J kg-1
DILUTION = 0.1
THERMAL_FACTOR = 0.08
W_CRIT = 0.05  # m s-1 at DX = 25 km
SHALLOW_MAX_DEPTH = 2000.0  # m
DETRAINED_FRACTION = 0.1
EVAPORATION_FACTOR = 0.2
SHALLOW_FLUX = 2.0e-5  # kg m-2 s-1
SHALLOW_CONDENSATE = 0.3
DOWNDRAFT_FRACTION = 0.3

OUTPUT_3D = ("RTHCUTEN", "RQVCUTEN", "RQCCUTEN", "RQRCUTEN", "RQICUTEN", "RQSCUTEN",
             "RUCUTEN", "RVCUTEN", "CLDFRA_DP", "CLDFRA_SH", "QC_CU", "QI_CU",
             "UDR_KF", "DDR_KF", "UER_KF", "DER_KF")
OUTPUT_2D = ("PRATEC", "NCA", "CUTOP", "CUBOT", "TIMEC_KF", "KIND")
INACTIVE, SHALLOW, DEEP = 0, 1, 2


def time_scale(dx, cape, dt):
    """Deep-convection relaxation time (s), a whole number of time steps dt."""
    tau = 1200.0 * (dx / 5000.0) ** 0.25 * (1000.0 / np.maximum(cape, 250.0)) ** 0.25
    steps = np.maximum(np.rint(np.clip(tau, 600.0, 3600.0) / dt), 1.0)
    return steps * dt


def _moist_lapse(t, p):
    """dT/dp (K Pa-1) along a pseudo-adiabat."""
    qs = saturation_mixing_ratio(t, p)
    num = c.R_D * t + c.XLV * qs
    den = p * (c.CP + c.XLV**2 * qs * c.EP2 / (c.R_D * t**2))
    return num / den


def _virtual(t, q):
    return t * (1.0 + q / c.EP2) / (1.0 + q)


def _parcel(T, QV, P, PI, mass, w0avg, dx, w_thermal):
    """Source-parcel properties, LCL, W kick and the parcel temperature on every level."""
    ncol, nz = T.shape
    src = P >= (P[:, :1] - SOURCE_DEPTH)
    src[:, 0] = True
    wsum = np.sum(mass * src, axis=1)
    theta_s = np.sum(T / PI * mass * src, axis=1) / wsum
    q_s = np.sum(QV * mass * src, axis=1) / wsum
    p_s = np.sum(P * mass * src, axis=1) / wsum
    t_s = theta_s * (p_s / c.P1000MB) ** c.RCP
    e = np.maximum(q_s * p_s / (c.EP2 + q_s), 1.0)
    ln_e = np.log(e / (1000.0 * c.SVP1))
    t_dew = (c.SVPT0 * c.SVP2 - c.SVP3 * ln_e) / (c.SVP2 - ln_e)  # Bolton, inverted
    t_dew = np.minimum(t_dew, t_s)
    t_lcl = 1.0 / (1.0 / (t_dew - 56.0) + np.log(t_s / t_dew) / 800.0) + 56.0
    p_lcl = p_s * (t_lcl / t_s) ** (1.0 / c.RCP)

    # Cloud-base level: first mass level above the LCL.
    above = P < p_lcl[:, None]
    k_base = np.where(above.any(axis=1), np.argmax(above, axis=1), nz - 1)
    w_lcl = np.take_along_axis(w0avg, k_base[:, None], axis=1)[:, 0]
    w_crit = W_CRIT * np.sqrt(25000.0 / dx)
    w_eff = w_lcl + w_thermal
    kick = 2.0 * np.tanh((w_eff - w_crit) / 0.1)

    # Parcel temperature: dry adiabat below the LCL, pseudo-adiabat (+ kick) above.
    t_par = theta_s[:, None] * PI
    q_par = np.repeat(q_s[:, None], nz, axis=1)
    t_cur, p_cur = t_lcl + kick, p_lcl.copy()
    for k in range(nz):
        lifted = above[:, k]
        if not lifted.any():
            continue
        p_target = P[:, k]
        for _ in range(4):  # sub-steps in pressure
            dp = np.where(lifted, (p_target - p_cur) / 4.0, 0.0)
            t_cur = t_cur + dp * _moist_lapse(t_cur, p_cur + 0.5 * dp)
            p_cur = p_cur + dp
        t_par[:, k] = np.where(lifted, t_cur, t_par[:, k])
        q_par[:, k] = np.where(lifted, saturation_mixing_ratio(t_cur, P[:, k]), q_par[:, k])
    return dict(theta_s=theta_s, q_s=q_s, p_lcl=p_lcl, k_base=k_base, w_lcl=w_lcl,
                w_crit=w_crit, w_eff=w_eff, t_par=t_par, q_par=q_par, above=above, src=src)


def run(inputs: dict, dx: float, dt: float, cudt: float = 0.0) -> dict:
    """Run the scheme on (column, level) inputs; returns WRF-named outputs per column."""
    T, QV, P, PI = inputs["T"], inputs["QV"], inputs["P"], inputs["PI"]
    RHO, DZ, Z = inputs["RHO"], inputs["DZ"], inputs["Z"]
    U, V, W0 = inputs["U"], inputs["V"], inputs["W0AVG"]
    hfx = inputs["HFX"]
    ncol, nz = T.shape
    mass = RHO * DZ  # kg m-2 per layer
    levels = np.arange(nz)[None, :]
    out = {name: np.zeros((ncol, nz)) for name in OUTPUT_3D}
    out.update({name: np.zeros(ncol) for name in OUTPUT_2D})
    out["CUTOP"][:] = 1.0
    out["CUBOT"][:] = nz + 1.0
    if ncol == 0:
        return out

    theta_sfc = T[:, 0] / PI[:, 0]
    w_star = np.cbrt(c.G / theta_sfc * np.maximum(hfx, 0.0) / (RHO[:, 0] * c.CP) * inputs["PBLH"])
    pc = _parcel(T, QV, P, PI, mass, W0, dx, THERMAL_FACTOR * w_star)
    k_base = pc["k_base"]
    buoyancy = c.G * (_virtual(pc["t_par"], pc["q_par"]) - _virtual(T, QV)) / _virtual(T, QV)
    # Level of free convection: first buoyant level within LFC_SEARCH of the LCL; the cloud
    # runs from the LCL level to the top of the buoyant layer that starts there.
    positive = pc["above"] & (buoyancy > 0)
    near = positive & (P > pc["p_lcl"][:, None] - LFC_SEARCH)
    k_lfc = np.argmax(near, axis=1)
    from_lfc = levels >= k_lfc[:, None]
    buoyant_run = np.cumprod(np.where(from_lfc, positive, True), axis=1).astype(bool) & from_lfc
    k_top = k_lfc + np.maximum(buoyant_run.sum(axis=1), 1) - 1
    cloud = (levels >= k_base[:, None]) & (levels <= k_top[:, None])
    cin = np.sum(np.where(cloud & (levels < k_lfc[:, None]), np.minimum(buoyancy, 0.0) * DZ, 0.0), axis=1)
    depth = np.take_along_axis(Z, k_top[:, None], 1)[:, 0] - np.take_along_axis(Z, k_base[:, None], 1)[:, 0]
    cape = np.sum(np.where(buoyant_run, buoyancy * DZ, 0.0), axis=1)
    has_cloud = near.any(axis=1) & (cin > -CIN_MAX)
    deep = has_cloud & (pc["w_lcl"] > pc["w_crit"]) & (depth >= DEEP_MIN_DEPTH) & (cape >= DEEP_MIN_CAPE)
    shallow = has_cloud & (pc["w_eff"] > pc["w_crit"]) & ~deep
    z_base = np.take_along_axis(Z, k_base[:, None], 1)
    k_cap = np.maximum(np.sum(Z <= z_base + SHALLOW_MAX_DEPTH, axis=1) - 1, k_base)
    k_top = np.where(shallow, np.minimum(k_top, k_cap), k_top)
    shallow &= k_top + 1 < nz  # room above the top for detrainment
    qs_env = saturation_mixing_ratio(T, P)

    # --- deep convection ---
    tau = time_scale(dx, cape, dt)
    heat = np.where(cloud & deep[:, None], np.maximum(DILUTION * (pc["t_par"] - T), 0.0), 0.0)
    dTdt = heat / tau[:, None]  # K s-1 of temperature
    condensation = np.sum(c.CP * dTdt * mass, axis=1) / c.XLV  # kg m-2 s-1
    deep &= condensation > 0
    moist_layer = (levels <= k_top[:, None]) & deep[:, None]
    vapour = np.where(moist_layer, QV, 0.0)
    drying = vapour / np.maximum(np.sum(vapour * mass, axis=1), 1e-30)[:, None] * condensation[:, None]
    detrained = DETRAINED_FRACTION * condensation
    top_levels = (levels <= k_top[:, None]) & (levels >= (k_top - 1)[:, None]) & deep[:, None]
    top_mass = np.maximum(np.sum(top_levels * mass, axis=1), 1e-30)
    detrain_rate = top_levels * (detrained / top_mass)[:, None]  # kg kg-1 s-1
    is_ice = T < 258.0
    sub_cloud = (levels < k_base[:, None]) & deep[:, None]
    sub_mass = np.maximum(np.sum(sub_cloud * mass, axis=1), 1e-30)
    rh_sub = np.sum(sub_cloud * mass * QV / qs_env, axis=1) / sub_mass
    evaporated = EVAPORATION_FACTOR * np.clip(1.0 - rh_sub, 0.0, 1.0) * (condensation - detrained)
    evap_rate = sub_cloud * (evaporated / sub_mass)[:, None]
    dTdt = dTdt - c.XLV / c.CP * evap_rate
    rqv_deep = -drying + evap_rate
    precip = np.where(deep, condensation - detrained - evaporated, 0.0)

    # --- shallow convection ---
    flux = np.where(shallow, SHALLOW_FLUX * (1.0 + np.maximum(hfx, 0.0) / 200.0), 0.0)
    lower = (levels <= k_base[:, None]) & shallow[:, None]
    upper = (levels >= k_top[:, None]) & (levels <= (k_top + 1)[:, None]) & (levels > k_base[:, None]) & shallow[:, None]
    # a one-level cloud detrains into the level above it
    lower_mass = np.maximum(np.sum(lower * mass, axis=1), 1e-30)
    upper_mass = np.maximum(np.sum(upper * mass, axis=1), 1e-30)
    removed = lower * (flux / lower_mass)[:, None]
    returned = upper * (flux / upper_mass)[:, None]
    rqv_shallow = -removed + (1.0 - SHALLOW_CONDENSATE) * returned
    rqc_shallow = SHALLOW_CONDENSATE * returned
    dTdt = dTdt + c.XLV / c.CP * (removed - (1.0 - SHALLOW_CONDENSATE) * returned)

    # --- mass flux, momentum transport, diagnostics ---
    active = deep | shallow
    top_eff = np.where(shallow, k_top + 1, k_top)
    span = np.maximum(top_eff - k_base, 1)
    s = (levels - k_base[:, None]) / span[:, None]
    in_updraft = (levels >= k_base[:, None]) & (levels <= top_eff[:, None]) & active[:, None]
    q_drop = np.maximum(pc["q_s"] - np.take_along_axis(pc["q_par"], k_top[:, None], 1)[:, 0], 1e-4)
    m_base = np.where(deep, condensation / q_drop, flux / np.maximum(pc["q_s"] * 0.1, 1e-4))
    shape = np.where(in_updraft, (1.0 + 0.6 * np.sin(np.pi * np.clip(s, 0, 1))) * (1.0 - np.clip(s, 0, 1) ** 3), 0.0)
    m_up = m_base[:, None] * shape  # kg m-2 s-1 on mass levels
    # Flux-form transport of cloud-base momentum: F on w levels, zero at cloud base and top.
    u_base = np.take_along_axis(U, k_base[:, None], 1)
    v_base = np.take_along_axis(V, k_base[:, None], 1)
    f_u = np.zeros((ncol, nz + 1))
    f_v = np.zeros((ncol, nz + 1))
    inner = in_updraft & (levels > k_base[:, None])  # w level k lies below mass level k
    f_u[:, :-1] = np.where(inner, m_up * (u_base - U), 0.0)
    f_v[:, :-1] = np.where(inner, m_up * (v_base - V), 0.0)
    area = dx * dx
    d_m = np.diff(np.concatenate([m_up, np.zeros((ncol, 1))], axis=1), axis=1)
    out["UER_KF"] = np.maximum(d_m, 0.0) * area
    out["UDR_KF"] = np.maximum(-d_m, 0.0) * area
    m_down = DOWNDRAFT_FRACTION * m_base[:, None] * np.where(sub_cloud, 1.0, 0.0)
    out["DDR_KF"] = m_down / np.maximum(k_base[:, None], 1) * area
    at_base = (levels == k_base[:, None]) & deep[:, None]
    out["DER_KF"] = -1.0 * at_base * DOWNDRAFT_FRACTION * m_base[:, None] * area

    out["RTHCUTEN"] = dTdt / PI
    out["RQVCUTEN"] = rqv_deep + rqv_shallow
    out["RQCCUTEN"] = np.where(is_ice, 0.0, detrain_rate) + rqc_shallow
    out["RQICUTEN"] = np.where(is_ice, detrain_rate, 0.0)
    out["RUCUTEN"] = -(f_u[:, 1:] - f_u[:, :-1]) / mass
    out["RVCUTEN"] = -(f_v[:, 1:] - f_v[:, :-1]) / mass
    peak = np.maximum(shape.max(axis=1), 1e-30)[:, None]
    rain_mm_h = precip * 3600.0
    out["CLDFRA_DP"] = np.where(in_updraft & deep[:, None], np.clip(
        0.05 + 0.5 * np.sqrt(np.minimum(rain_mm_h, 40.0) / 40.0)[:, None] * shape / peak, 0.01, 0.6), 0.0)
    out["CLDFRA_SH"] = np.where(in_updraft & shallow[:, None], np.clip(
        0.02 + 0.18 * np.minimum(np.maximum(hfx, 0.0) / 300.0, 1.0)[:, None] * shape / peak, 0.01, 0.2), 0.0)
    residual = np.where(in_updraft, np.maximum(pc["q_s"][:, None] - pc["q_par"], 0.0) * 0.05, 0.0)
    liquid = np.clip((T - 248.0) / 20.0, 0.0, 1.0)
    cloud_frac = out["CLDFRA_DP"] + out["CLDFRA_SH"]
    out["QC_CU"] = residual * liquid * cloud_frac
    out["QI_CU"] = residual * (1.0 - liquid) * cloud_frac

    out["PRATEC"] = precip  # kg m-2 s-1 == mm s-1
    out["NCA"] = np.where(deep, tau, np.where(shallow, cudt * 60.0, 0.0))
    out["TIMEC_KF"] = np.where(active, tau, 0.0)
    out["CUTOP"] = np.where(active, top_eff + 1.0, 1.0)
    out["CUBOT"] = np.where(active, k_base + 1.0, nz + 1.0)
    out["KIND"] = np.where(deep, DEEP, np.where(shallow, SHALLOW, INACTIVE)).astype(float)
    for name in OUTPUT_3D:
        out[name] = np.where(active[:, None], out[name], 0.0)
    return out
