"""A physically plausible synthetic atmosphere on WRF's grid.

The state is an analytic function of position and time, so any model step can be rebuilt
exactly and the generator stays deterministic given its seed:

* a hybrid sigma-pressure vertical grid (WRF ``hybrid_opt = 2``) and WRF's real.exe base state
  (PB, PHB, MUB) for the column's terrain;
* a convective-regime field ``m`` in [0, 1] from smooth random modes: m -> 1 gives warm, moist,
  deep boundary layers under a conditionally unstable free troposphere; m -> 0 gives cool, dry,
  capped stable air with subsidence;
* moving convective systems (Gaussian blobs with a life cycle) that bring grid-scale ascent and
  mid-level moisture, with ascent scaled like resolved updrafts, stronger at fine DX;
* hydrostatic pressure from the hybrid coordinate applied to the surface pressure and
  geopotential from the hypsometric equation with virtual temperature (iterated so that the
  height-based profiles and the heights agree).

All profiles are SI; arrays are (bottom_top, south_north, west_east) as in a wrfout frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator import constants as c
from emulator.derive import density, exner, saturation_mixing_ratio
# WRF real.exe's base-state parameters (namelist defaults) and the vertical grid are those of
# the re-gridding of mlcu augment.
from training.regrid import BASE_A, BASE_P00, BASE_T00, BASE_TISO, VerticalGrid


def stretched_levels(n_levels: int, p_top: float = 5000.0, dz_bottom: float = 50.0,
                     stretch: float = 1.15) -> np.ndarray:
    """Full-level eta for ``n_levels`` mass levels: layers that start ``dz_bottom`` thick and
    grow geometrically to a constant thickness chosen so that the top lands on p_top in a
    standard atmosphere (the spirit of WRF's auto_levels_opt = 2)."""
    if n_levels < 10:
        raise ValueError(f"need at least 10 mass levels, got {n_levels}")

    def std_pressure(z):  # US standard atmosphere, troposphere + isothermal stratosphere
        t_tp, z_tp = 216.65, 11000.0
        p_tp = 101325.0 * (t_tp / 288.15) ** (c.G / (c.R_D * 0.0065))
        trop = 101325.0 * (1.0 - 0.0065 * z / 288.15) ** (c.G / (c.R_D * 0.0065))
        return np.where(z < z_tp, trop, p_tp * np.exp(-c.G * (z - z_tp) / (c.R_D * t_tp)))

    z_top = 11000.0 + c.R_D * 216.65 / c.G * np.log(std_pressure(11000.0) / p_top)

    def thicknesses(dz_max):
        dz = dz_bottom * stretch ** np.arange(n_levels)
        return np.minimum(dz, dz_max)

    lo, hi = dz_bottom, z_top
    for _ in range(100):  # bisection on the constant upper thickness
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if thicknesses(mid).sum() < z_top else (lo, mid)
    z_w = np.concatenate([[0.0], np.cumsum(thicknesses(0.5 * (lo + hi)))])
    z_w *= z_top / z_w[-1]
    p_w = std_pressure(z_w)
    eta = (p_w - p_top) / (p_w[0] - p_top)
    eta[0], eta[-1] = 1.0, 0.0
    return eta


class SmoothField:
    """A smooth random field on the grid: a sum of a few cosine modes with wavelengths of
    ``min_wavelength``-``max_wavelength`` grid cells, scaled to about [-1, 1]."""

    def __init__(self, rng: np.random.Generator, n_modes: int = 6,
                 min_wavelength: float = 12.0, max_wavelength: float = 40.0):
        wavelength = rng.uniform(min_wavelength, max_wavelength, n_modes)
        angle = rng.uniform(0.0, 2.0 * np.pi, n_modes)
        self.kx = 2.0 * np.pi / wavelength * np.cos(angle)
        self.ky = 2.0 * np.pi / wavelength * np.sin(angle)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, n_modes)
        self.amp = rng.uniform(0.5, 1.0, n_modes)
        self.amp /= np.sqrt(0.5 * np.sum(self.amp**2)) * 1.5

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        arg = self.kx * x[..., None] + self.ky * y[..., None] + self.phase
        return np.sum(self.amp * np.cos(arg), axis=-1)


@dataclass
class ConvectiveSystems:
    """Moving Gaussian blobs of ascent and moisture with a sine life cycle.

    Positions and radii are in grid cells, so every DX sees systems a few cells wide (as a
    mesoscale system looks to a model at that DX); times are in seconds.
    """

    x0: np.ndarray
    y0: np.ndarray
    vx: np.ndarray  # cells per second
    vy: np.ndarray
    radius: np.ndarray
    t_start: np.ndarray
    lifetime: np.ndarray

    @classmethod
    def random(cls, rng, nx, ny, duration_s, density_per_cell=1.0 / 200.0):
        n = max(3, int(round(nx * ny * density_per_cell)))
        speed = rng.uniform(1.0, 4.0, n) / 3600.0
        direction = rng.uniform(0.0, 2.0 * np.pi, n)
        lifetime = rng.uniform(5400.0, 10800.0, n)
        return cls(
            x0=rng.uniform(0, nx, n), y0=rng.uniform(0, ny, n),
            vx=speed * np.cos(direction), vy=speed * np.sin(direction),
            radius=rng.uniform(1.5, 3.0, n),
            t_start=rng.uniform(-0.7 * lifetime, duration_s * 0.8, n),
            lifetime=lifetime,
        )

    def intensity(self, x, y, t):
        """Sum of the active systems' intensities in [0, ~1] at grid points (x, y), time t."""
        age = (t - self.t_start) / self.lifetime
        envelope = np.where((age > 0) & (age < 1), np.sin(np.pi * np.clip(age, 0, 1)), 0.0)
        cx = self.x0 + self.vx * (t - self.t_start)
        cy = self.y0 + self.vy * (t - self.t_start)
        r2 = (x[..., None] - cx) ** 2 + (y[..., None] - cy) ** 2
        blobs = envelope * np.exp(-0.5 * r2 / self.radius**2)
        return np.clip(np.sum(blobs, axis=-1), 0.0, 1.2)


@dataclass
class Frame:
    """The model state at one time, WRF names and SI units, (k, j, i) arrays."""

    fields: dict[str, np.ndarray]
    z_mass: np.ndarray  # height of mass levels above ground, m

    def __getitem__(self, name):
        return self.fields[name]


class SyntheticAtmosphere:
    """Deterministic synthetic weather on an nx x ny x n_levels grid at spacing dx."""

    def __init__(self, rng: np.random.Generator, nx: int, ny: int, grid: VerticalGrid,
                 dx: float, duration_s: float):
        self.nx, self.ny, self.grid, self.dx = nx, ny, grid, dx
        jj, ii = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
        self.x, self.y = ii + 0.5, jj + 0.5  # mass points in grid units
        self.regime = SmoothField(rng)
        self.landsea = SmoothField(rng, min_wavelength=20.0, max_wavelength=60.0)
        self.terrain = SmoothField(rng, min_wavelength=8.0, max_wavelength=24.0)
        self.pressure_pattern = SmoothField(rng, min_wavelength=30.0, max_wavelength=80.0)
        self.wind_pattern = SmoothField(rng, min_wavelength=20.0, max_wavelength=60.0)
        self.w_noise = SmoothField(rng, n_modes=10, min_wavelength=3.0, max_wavelength=8.0)
        self.systems = ConvectiveSystems.random(rng, nx, ny, duration_s)
        self.jet_direction = rng.uniform(-0.6, 0.6)  # radians from westerly
        self.shear = rng.uniform(1.0, 3.0)  # m s-1 per km
        # Resolved ascent is stronger at fine grid spacing.
        self.w_scale = float(np.clip((5000.0 / dx) ** 0.4, 0.5, 1.25))

        land = self.landsea(self.x, self.y) > -0.25
        self.xland = np.where(land, 1.0, 2.0)
        self.hgt = np.where(land, 450.0 * np.clip(0.5 + 0.5 * self.terrain(self.x, self.y), 0, 1), 0.0)
        self.base = self._base_state()

    def _base_state(self):
        """WRF real.exe base state for the terrain: PB, PHB, MUB (and the base theta)."""
        g = self.grid
        p_surf = BASE_P00 * np.exp(-BASE_T00 / BASE_A + np.sqrt(
            (BASE_T00 / BASE_A) ** 2 - 2.0 * c.G * self.hgt / (BASE_A * c.R_D)))
        mub = p_surf - g.p_top
        pb = g.c3h[:, None, None] * mub + g.c4h[:, None, None] + g.p_top
        temp = np.maximum(BASE_TISO, BASE_T00 + BASE_A * np.log(pb / BASE_P00))
        theta_b = temp * (BASE_P00 / pb) ** c.RCP
        alb = (c.R_D / c.P1000MB) * theta_b * (pb / c.P1000MB) ** c.CVPM
        dnw = np.diff(g.znw)
        phb = np.empty((g.n_levels + 1,) + mub.shape)
        phb[0] = self.hgt * c.G
        for k in range(g.n_levels):
            phb[k + 1] = phb[k] - dnw[k] * (g.c1h[k] * mub + g.c2h[k]) * alb[k]
        return {"PB": pb, "PHB": phb, "MUB": mub}

    def regime_at(self, t):
        """Convective regime m in [0, 1] and convective-system intensity at time t."""
        systems = self.systems.intensity(self.x, self.y, t)
        m = 1.0 / (1.0 + np.exp(-3.0 * self.regime(self.x, self.y)))
        return np.clip(m + 0.4 * systems, 0.0, 1.0), systems

    def _profiles(self, z, p, m, systems, psfc):
        """Temperature and vapour on mass levels at heights z (m above ground), pressures p."""
        land = self.xland == 1.0
        t_sfc = (288.0 + 12.0 * m) * exner(psfc) + 1.5 * land * m  # warm land surface layer
        pbl = np.where(land, 600.0 + 1400.0 * m, 400.0 + 400.0 * m)
        inversion = 5.0 - 4.5 * m  # K over 300 m
        lapse = (5.8 + 1.2 * m) / 1000.0  # K m-1
        z_trop = 10500.0 + 4500.0 * m
        t_pbl = t_sfc - c.G / c.CP * pbl
        t_inv = t_pbl + inversion
        z_inv = pbl + 300.0
        t_trop = t_inv - lapse * (z_trop - z_inv)
        temp = np.where(z <= pbl, t_sfc - c.G / c.CP * z,
               np.where(z <= z_inv, t_pbl + inversion * (z - pbl) / 300.0,
               np.where(z <= z_trop, t_inv - lapse * (z - z_inv),
               np.where(z <= z_trop + 3000.0, t_trop, t_trop + 2.0e-3 * (z - z_trop - 3000.0)))))
        temp = np.maximum(temp, 190.0)

        p_pbl = psfc * (t_pbl / t_sfc) ** (1.0 / c.RCP)  # dry adiabat up to the PBL top
        rh_pbl = 0.62 + 0.33 * m
        q_pbl = rh_pbl * saturation_mixing_ratio(t_pbl, p_pbl)
        rh_free = np.clip(0.15 + 0.6 * m + 0.25 * systems, 0.05, 0.95)
        frac = np.clip((z - z_inv) / (z_trop - z_inv), 0.0, 1.0)
        rh = np.where(z <= z_inv, rh_pbl + (rh_free - rh_pbl) * np.clip((z - pbl) / 300.0, 0, 1),
                      rh_free * (1.0 - 0.75 * frac))
        qv = np.where(z <= pbl, q_pbl, rh * saturation_mixing_ratio(temp, p))
        qv = np.minimum(qv, saturation_mixing_ratio(temp, p))
        qv = np.where(z > z_trop, 3.0e-6, np.maximum(qv, 3.0e-6))
        return temp, qv, pbl

    def frame(self, t: float) -> Frame:
        """The full state at time t (s since the start)."""
        g = self.grid
        m, systems = self.regime_at(t)
        psfc = (101300.0 + 600.0 * self.pressure_pattern(self.x, self.y) - 400.0 * m) * np.exp(
            -c.G * self.hgt / (c.R_D * 290.0))
        mu = psfc - g.p_top
        p_w = g.c3f[:, None, None] * mu + g.c4f[:, None, None] + g.p_top
        p_m = g.c3h[:, None, None] * mu + g.c4h[:, None, None] + g.p_top

        # Heights: start from an isothermal guess, then iterate profiles <-> hypsometric heights.
        log_thick = np.log(p_w[:-1] / p_w[1:])
        z_w = np.concatenate([np.zeros_like(psfc)[None],
                              np.cumsum(c.R_D * 260.0 / c.G * log_thick, axis=0)])
        for _ in range(4):
            z_m = 0.5 * (z_w[1:] + z_w[:-1])
            temp, qv, pbl = self._profiles(z_m, p_m, m, systems, psfc)
            t_virtual = temp * (1.0 + qv / c.EP2) / (1.0 + qv)
            z_w = np.concatenate([np.zeros_like(psfc)[None],
                                  np.cumsum(c.R_D * t_virtual / c.G * log_thick, axis=0)])
        z_m = 0.5 * (z_w[1:] + z_w[:-1])
        theta = temp / exner(p_m)

        # Vertical velocity on full levels: convective systems' ascent profile, weak
        # subsidence in stable air, small-scale noise; zero at the surface and the model top.
        zw_km = z_w / 1000.0
        z_peak = 3.0 + 2.0 * m
        ascent = 2.2 * self.w_scale * systems * (zw_km / z_peak) * np.exp(1.0 - zw_km / z_peak)
        taper = np.clip((16.0 - zw_km) / 4.0, 0.0, 1.0)
        noise = 0.04 * self.w_noise(self.x + t / 1800.0, self.y) * np.sin(np.pi * np.clip(zw_km / 14.0, 0, 1))
        w = (ascent - 0.04 * (1.0 - m) * np.sin(np.pi * np.clip(zw_km / 12.0, 0, 1))) * taper + noise
        w[0], w[-1] = 0.0, 0.0

        u, v = self._winds(z_m, m)
        speed = np.hypot(0.5 * (u[0, :, 1:] + u[0, :, :-1]), 0.5 * (v[0, 1:] + v[0, :-1]))
        land = self.xland == 1.0
        hfx = np.where(land, 20.0 + 330.0 * m, 5.0 + 25.0 * m) * (1.0 + 0.1 * self.terrain(self.x, self.y))
        ust = np.clip(0.08 + 0.04 * speed + 0.1 * land, 0.1, 0.8)
        rho = density(theta, qv, p_m)
        fields = {
            "T": theta - c.T0, "QVAPOR": qv, "P": p_m - self.base["PB"], "PB": self.base["PB"],
            "P_HYD": p_m, "PH": c.G * (z_w + self.hgt) - self.base["PHB"], "PHB": self.base["PHB"],
            "W": w, "U": u, "V": v, "PSFC": psfc, "HGT": self.hgt, "MUB": self.base["MUB"],
            "MU": mu - self.base["MUB"], "HFX": hfx, "UST": ust, "PBLH": pbl, "XLAND": self.xland,
            "RHO": rho, "PI_PHY": exner(p_m), "T_PHY": temp,
        }
        return Frame(fields, z_m)

    def _winds(self, z_m, m):
        """Staggered winds: a sheared westerly jet turned by jet_direction, with a low-level
        jet in moist regions; evaluated on the U and V faces from neighbouring columns."""
        zk = np.clip(z_m / 1000.0, 0.0, None)
        base = 3.0 + 2.0 * self.wind_pattern(self.x, self.y)
        profile = base + self.shear * np.minimum(zk, 11.0) - 0.8 * self.shear * np.clip(zk - 11.0, 0, None)
        llj = 4.0 * m * np.exp(-((zk - 0.8) ** 2) / 0.3)
        u_m = profile * np.cos(self.jet_direction) - 0.3 * llj
        v_m = profile * np.sin(self.jet_direction) + llj
        u = np.concatenate([u_m[:, :, :1], 0.5 * (u_m[:, :, 1:] + u_m[:, :, :-1]), u_m[:, :, -1:]], axis=2)
        v = np.concatenate([v_m[:, :1], 0.5 * (v_m[:, 1:] + v_m[:, :-1]), v_m[:, -1:]], axis=1)
        return u, v
