"""Physical constants with WRF's values (share/module_model_constants.F), SI units."""

G = 9.81  # gravity, m s-2
R_D = 287.0  # dry-air gas constant, J kg-1 K-1
R_V = 461.6  # water-vapour gas constant, J kg-1 K-1
CP = 7.0 * R_D / 2.0  # dry-air heat capacity at constant pressure, J kg-1 K-1 (1004.5)
CV = CP - R_D
RCP = R_D / CP  # Exner exponent
CVPM = -CV / CP  # exponent of the WRF equation of state
RV_OVER_RD = R_V / R_D
EP2 = R_D / R_V  # ratio of gas constants, ~0.622
P1000MB = 1.0e5  # reference pressure of potential temperature, Pa
T0 = 300.0  # WRF's theta offset: wrfout T is theta - T0, K
XLV = 2.5e6  # latent heat of vaporisation, J kg-1
XLS = 2.85e6  # latent heat of sublimation, J kg-1
XLF = XLS - XLV  # latent heat of fusion, J kg-1
SVP1, SVP2, SVP3, SVPT0 = 0.6112, 17.67, 29.65, 273.15  # Bolton saturation vapour pressure
KARMAN = 0.4  # von Karman constant
MAX_HOLD = 86400.0  # longest convective hold (NCA), s: MSKF caps its time scale at a day
