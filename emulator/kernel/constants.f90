!> Physical constants (WRF's values, as emulator/constants.py) and the scheme's parameters,
!! each with its source. "Measured" means fitted to or checked against WRF's MSKF as a black
!! box (emulator/kernel/README.md).
!!
!! Glossary of the kernel's names (all files of emulator/kernel/):
!!   n, m, nz     columns, packed columns, mass levels (level 1 at the ground)
!!   i, j, k, c   column, packed column, level, candidate source layer
!!   t, q, p      temperature (K), water-vapour mixing ratio (kg/kg), pressure (Pa)
!!   dp, dz       pressure depth (Pa, = rho g dz) and thickness (m) of a layer
!!   z            height of a mass level above the ground (m)
!!   lnp          ln(p1000 / p)
!!   thetae, te   equivalent potential temperature (Bolton 1980), K
!!   qs           saturation mixing ratio (kg/kg); es saturation vapour pressure (Pa)
!!   tv           virtual temperature (K); tvc: density temperature with condensate loading
!!   ql, qi       liquid and ice condensate carried by the updraft (kg/kg)
!!   new_l, new_i condensate formed in the current layer (kg/kg)
!!   mu, md       updraft / downdraft mass flux per unit cloud-base updraft mass flux
!!   eu, du       updraft entrainment / detrainment per layer (same units)
!!   ed, dd       downdraft entrainment / detrainment per layer (same units, both >= 0)
!!   w2           squared updraft vertical velocity (m2 s-2)
!!   src          the updraft source layer (USL): base and top levels, mixed properties
!!   lcl          lifting condensation level; k_lcl the first level at or above it (CUBOT)
!!   k_top        cloud top level (CUTOP); k_etl equilibrium-temperature level
!!   k_lfs        downdraft source level (level of free sink)
!!   chi          fraction of environmental air in an updraft-environment mixture
!!   fe, fd       entrained / detrained fraction of the mixing rate at a level
!!   rei          mixing rate at a level (per unit cloud-base mass flux)
!!   cape         dilute buoyant energy of the updraft (J/kg)
!!   sf           MSKF's scale factor 1 + ln(25 km / DX), at least 1 (Zheng et al. 2016)
!!   fall_rate    the updraft's condensate fallout rate (s-1)
!!   production   precipitation formed by the updraft (kg/kg per unit cloud-base mass flux)
module kernel_constants
  implicit none
  public
  integer, parameter :: rk = kind(1.0)  ! single precision, as WRF builds the scheme

  ! WRF's constants (share/module_model_constants.F; emulator/constants.py)
  real(rk), parameter :: g = 9.81, r_d = 287.0, r_v = 461.6, cp = 7.0 * r_d / 2.0
  real(rk), parameter :: ep2 = r_d / r_v         ! ratio of gas constants
  real(rk), parameter :: p1000 = 1.0e5
  real(rk), parameter :: kappa = r_d / cp
  real(rk), parameter :: svp1 = 0.6112, svp2 = 17.67, svp3 = 29.65, svpt0 = 273.15
  ! Latent heats as MSKF receives them: L_v(T) = xlv0 - xlv1 T, L_s(T) = xls0 - xls1 T
  real(rk), parameter :: xlv0 = 3.15e6, xlv1 = 2370.0, xls0 = 2.905e6, xls1 = 259.532
  real(rk), parameter :: t00 = 273.16            ! triple point, K
  ! Virtual-temperature coefficient as the Kain-Fritsch scheme writes it (R_v / R_d - 1)
  real(rk), parameter :: ep1 = 0.608

  ! Bolton (1980), eq. 43 in mixing-ratio units with the coefficients of the Kain-Fritsch
  ! scheme (Kain & Fritsch 1993): theta_e = T (p1000/p)^(0.2854 (1 - 0.28 r))
  ! exp((c1 / T_L - c2) r (1 + 0.81 r))
  real(rk), parameter :: te_a = 0.2854, te_b = 0.28, te_c1 = 3374.6525, te_c2 = 2.5403, te_d = 0.81
  ! Saturation over ice, Teten form (the Kain-Fritsch scheme's coefficients)
  real(rk), parameter :: ice_a = 613.2, ice_b = 22.452, ice_d = 0.61
  ! LCL temperature from the dew point (the fit used by Kain & Fritsch 1993):
  ! T_L = T_d - (a + b (T_d - T00) - c (T - T00)) (T - T_d)
  real(rk), parameter :: lcl_a = 0.212, lcl_b = 1.571e-3, lcl_c = 4.36e-4

  ! Source layers (Kain 2004, section 2a; the project's features.py): candidate bases every
  ! 15 hPa up to 300 hPa above the lowest level, each layer deeper than 50 hPa
  real(rk), parameter :: src_spacing = 1500.0, src_search = 30000.0, src_depth = 5000.0
  ! Trigger (Kain 2004, eq. 1-2): dT = 4.64 (w_g - c(z))^(1/3), c(z) = 0.02 m/s z/2 km below 2 km
  real(rk), parameter :: trigger_k = 4.64, trigger_w = 0.02, trigger_z = 2000.0
  ! Updraft velocity at the LCL (Kain 2004, eq. 5): 1 + 1.1 ((z_LCL - z_USL) dT / T)^(1/2)
  ! at most w_lcl_max (measured against MSKF: a cap at 3 m/s raises the agreement of kind
  ! 0.977 -> 0.986, CUBOT 0.903 -> 0.961, CUTOP 0.709 -> 0.791; 2.7 or 3.3 m/s do less well)
  real(rk), parameter :: w_lcl_k = 1.1, w_lcl_max = 3.0
  ! Glaciation between these temperatures (Kain & Fritsch 1993; Kain 2004)
  real(rk), parameter :: t_freeze_start = 268.16, t_freeze_end = 248.16
  ! Condensate fallout, Ogura & Cho (1973): dq/dt = -c q (Kain & Fritsch 1993 use c = 0.01 s-1).
  ! MSKF's fallout depends on the grid spacing: c = 0.027 s-1 / sf^0.95 with the scale factor
  ! sf = 1 + ln(25 km / DX) (fitted to the oracle, see kernel/README.md: CUTOP agreement 0.811
  ! with c = 0.01 -> 0.920; 0.01 s-1 at 3 km, 0.027 s-1 at 25 km)
  real(rk), parameter :: fallout_rate = 0.027, fallout_sf_power = 0.95
  ! Buoyancy and loading act on the updraft divided by 1 + 0.5 (virtual mass; Kain & Fritsch 1990)
  real(rk), parameter :: virtual_mass = 1.5
  ! Mixing rate 0.03 dp / R (Kain 2004, eq. 4); R: the LCL height or the source layer's top,
  ! at least 500 m, divided by sf (MSKF's LCL-based entrainment, Zheng et al. 2016; measured)
  real(rk), parameter :: mixing_coefficient = 0.03, min_radius = 500.0
  ! Buoyancy sorting (Kain & Fritsch 1990): the test mixtures, the least entrained fraction
  ! (Kain 2004) and MSKF's detrainment factor (measured)
  real(rk), parameter :: test_mix_dry = 0.95, test_mix_moist = 0.10
  real(rk), parameter :: min_entrained = 0.5, detrain_factor = 1.5
  ! The updraft ends where its mass flux falls below 10 kg/s (Kain & Fritsch 1993), with the
  ! LCL mass flux of an updraft over 1 % of the grid cell
  real(rk), parameter :: exhausted_flux = 10.0, updraft_area = 0.01
  ! Minimum depth of a deep cloud (Kain 2004): 4 km for T_LCL > 20 C, 2 km below 0 C
  real(rk), parameter :: deep_min = 2000.0, deep_max = 4000.0
  ! Downdraft (Kain 2004): source 150 hPa above the source layer, mass flux 2 (1 - RH)
  real(rk), parameter :: dd_source_dp = 15000.0, dd_rh_factor = 2.0
  ! ... and none where the updraft's precipitation per unit mass flux x RH^1.25 at the
  ! source exceeds 0.0245 (fitted to the oracle)
  real(rk), parameter :: dd_off_production = 0.0245, dd_off_rh_power = 1.25
  ! MSKF's convective time scale (measured): the velocity scale W^3 = a E V with V from
  ! the surface layer; the advective time DX / V_conv (Kain 2004)
  real(rk), parameter :: tau_a = 0.0571, tau_zol = 0.7592, tau_wstar = 0.0515
  ! ... and a shallow cloud's, tau_shallow sf E^(-1/3) V^(-1/2) with E at least 1 J/kg
  ! (measured: kernel/README.md step 14)
  real(rk), parameter :: tau_shallow = 8505.0, shallow_min_energy = 1.0
  ! MSKF caps its time scale at a day (emulator/constants.py MAX_HOLD)
  real(rk), parameter :: max_hold = 86400.0
end module kernel_constants
