!> The Python entry point (f2py, emulator/updraft.py): the kernel on n columns of nz levels,
!! (column, level) arrays with the column index fastest; lev (column, field, level) and col
!! (column, field) in updraft.py's LEVEL_FIELDS and COLUMN_FIELDS order. status 1: the
!! caller's layout is not the kernel's (nothing computed).
subroutine convection_columns(n, nz, n_level, n_column, t, q, p, rho, dz, w0, u, v, &
                              hfx, ust, pblh, zol, dx, lev, col, status)
  use kernel_driver, only: run_columns, n_level_fields, n_column_fields
  implicit none
  integer, intent(in) :: n, nz, n_level, n_column
  real, intent(in), dimension(n, nz) :: t, q, p, rho, dz, w0, u, v
  real, intent(in), dimension(n) :: hfx, ust, pblh, zol, dx
  real, intent(out) :: lev(n, n_level, nz), col(n, n_column)
  integer, intent(out) :: status
  lev = 0.0
  col = 0.0
  status = 1
  if (n_level /= n_level_fields .or. n_column /= n_column_fields) return
  status = 0
  if (n == 0 .or. nz < 2) return
  call run_columns(n, nz, t, q, p, rho, dz, w0, u, v, hfx, ust, pblh, zol, dx, lev, col)
end subroutine

