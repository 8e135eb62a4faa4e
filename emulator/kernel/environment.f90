!> The grid-scale environment of the columns as the kernel uses it: (column, level) arrays,
!! column index fastest.
module kernel_environment
  use kernel_constants
  use kernel_math
  use kernel_thermo
  implicit none
  private
  public :: environment, make_environment, pack_environment

  type :: environment
    integer :: n = 0, nz = 0
    real(rk), allocatable, dimension(:, :) :: t, q, p, lnp, dp, z, dz, w0, u, v, qs, thetae, tv
  end type

contains

  !> The environment of the inputs: vapour limited to saturation and at least 1e-6 (as the
  !! Kain-Fritsch scheme limits it), layer depth dp = rho g dz (MSKF's, checked against its
  !! source-layer entrainment), heights of the mass levels from the layer thicknesses.
  subroutine make_environment(n, nz, t, q, p, rho, dz, w0, u, v, env)
    integer, intent(in) :: n, nz
    real(rk), intent(in), dimension(n, nz) :: t, q, p, rho, dz, w0, u, v
    type(environment), intent(out) :: env
    integer :: i, k
    call allocate_environment(env, n, nz)
    do k = 1, nz
      do i = 1, n
        env%t(i, k) = t(i, k)
        env%p(i, k) = p(i, k)
        env%lnp(i, k) = klog(p1000 / p(i, k))
        env%dz(i, k) = dz(i, k)
        env%dp(i, k) = rho(i, k) * g * dz(i, k)
        env%w0(i, k) = w0(i, k)
        env%u(i, k) = u(i, k)
        env%v(i, k) = v(i, k)
        env%qs(i, k) = qsat(min(es_liquid(t(i, k)), 0.5 * p(i, k)), p(i, k))
        env%q(i, k) = max(min(q(i, k), env%qs(i, k)), 1.0e-6)
        env%thetae(i, k) = theta_e(p(i, k), env%lnp(i, k), t(i, k), env%q(i, k))
        env%tv(i, k) = t(i, k) * (1.0 + ep1 * env%q(i, k))
      end do
    end do
    do i = 1, n
      env%z(i, 1) = 0.5 * dz(i, 1)
    end do
    do k = 2, nz
      do i = 1, n
        env%z(i, k) = env%z(i, k - 1) + 0.5 * (dz(i, k - 1) + dz(i, k))
      end do
    end do
  end subroutine

  subroutine allocate_environment(env, n, nz)
    type(environment), intent(inout) :: env
    integer, intent(in) :: n, nz
    env%n = n
    env%nz = nz
    allocate(env%t(n, nz), env%q(n, nz), env%p(n, nz), env%lnp(n, nz), env%dp(n, nz), env%z(n, nz), &
             env%dz(n, nz), env%w0(n, nz), env%u(n, nz), env%v(n, nz), env%qs(n, nz), &
             env%thetae(n, nz), env%tv(n, nz))
  end subroutine

  !> The environment of the columns idx(1:m), packed in that order.
  subroutine pack_environment(env, m, idx, out)
    type(environment), intent(in) :: env
    integer, intent(in) :: m, idx(m)
    type(environment), intent(out) :: out
    integer :: j, k
    call allocate_environment(out, m, env%nz)
    do k = 1, env%nz
      do j = 1, m
        out%t(j, k) = env%t(idx(j), k)
        out%q(j, k) = env%q(idx(j), k)
        out%p(j, k) = env%p(idx(j), k)
        out%lnp(j, k) = env%lnp(idx(j), k)
        out%dp(j, k) = env%dp(idx(j), k)
        out%z(j, k) = env%z(idx(j), k)
        out%dz(j, k) = env%dz(idx(j), k)
        out%w0(j, k) = env%w0(idx(j), k)
        out%u(j, k) = env%u(idx(j), k)
        out%v(j, k) = env%v(idx(j), k)
        out%qs(j, k) = env%qs(idx(j), k)
        out%thetae(j, k) = env%thetae(idx(j), k)
        out%tv(j, k) = env%tv(idx(j), k)
      end do
    end do
  end subroutine
end module kernel_environment
