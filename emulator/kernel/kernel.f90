!> The kernel as one translation unit, so that the compiler inlines the small elemental
!! routines across the modules (and vectorises the loops over columns that call them). Each
!! included file is one module, one physical process (README.md in this folder).
include 'constants.f90'
include 'mathlib.f90'
include 'thermo.f90'
include 'environment.f90'
include 'source.f90'
include 'updraft.f90'
include 'cloud.f90'
include 'scales.f90'
include 'downdraft.f90'
include 'tendency.f90'
include 'driver.f90'
include 'entry.f90'
