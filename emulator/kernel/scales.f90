!> Time scales and the precipitation efficiency of a cloud.
module kernel_scales
  use kernel_constants
  use kernel_math
  use kernel_environment
  use kernel_source
  use kernel_updraft
  implicit none
  private
  public :: time_scales, precipitation_efficiency

contains

  !> The advective time DX / V_conv, V_conv the mean of the wind speeds at the LCL level and
  !! at the highest level with at least half the lowest level's pressure (Kain 2004; with
  !! the cloud base, it reproduces MSKF's NCA), and MSKF's convective time scale (Zheng et
  !! al. 2016: the cloud depth over a velocity scale, times the scale factor), never shorter
  !! than the advective time. The velocity scale W, measured against MSKF:
  !! W^3 = tau_a E V with E the dilute buoyant energy and V^2 = u*^2 (1 + tau_zol (-z/L)^(2/3))
  !! + tau_wstar w*^2 the surface layer's velocity scale (w* from HFX over the height of the
  !! LCL). A shallow cloud's time scale does not grow with its depth: tau_shallow sf
  !! E^(-1/3) V^(-1/2), measured against MSKF (kernel/README.md step 14).
  subroutine time_scales(env, src, pl, deep, dx, sf, hfx, ust, zol, t_adv, t_conv, v_sub)
    type(environment), intent(in) :: env
    type(source_layer), intent(in) :: src
    type(plume), intent(in) :: pl
    logical, intent(in) :: deep(:)
    real(rk), intent(in), dimension(:) :: dx, sf, hfx, ust, zol
    real(rk), intent(out), dimension(:) :: t_adv, t_conv, v_sub
    integer :: m, j, k, k5
    real(rk) :: speed_lcl, speed_5, wstar3, w, t_cloud
    m = size(dx)
    do j = 1, m
      k5 = 1
      do k = 1, env%nz
        if (env%p(j, k) >= 0.5 * env%p(j, 1)) k5 = k
      end do
      k = src%k_lcl(j)
      speed_lcl = sqrt(env%u(j, k) ** 2 + env%v(j, k) ** 2)
      speed_5 = sqrt(env%u(j, k5) ** 2 + env%v(j, k5) ** 2)
      t_adv(j) = dx(j) / max(0.5 * (speed_lcl + speed_5), 1.0e-3)
      wstar3 = g / env%t(j, 1) * max(hfx(j), 0.0) / (env%dp(j, 1) / (g * env%dz(j, 1)) * cp) * src%z_lcl(j)
      v_sub(j) = sqrt(ust(j) ** 2 * (1.0 + tau_zol * kpow(max(-zol(j), 1.0e-12), 2.0 / 3.0)) &
                      + tau_wstar * kpow(max(wstar3, 1.0e-12), 2.0 / 3.0))
      w = kpow(max(tau_a * pl%cape(j) * v_sub(j), 1.0e-9), 1.0 / 3.0)
      t_cloud = merge(sf(j) * pl%depth(j) / w, &
                      tau_shallow * sf(j) / (kpow(max(pl%cape(j), shallow_min_energy), 1.0 / 3.0) &
                                             * sqrt(max(v_sub(j), 1.0e-3))), deep(j))
      t_conv(j) = max(t_adv(j), min(t_cloud, max_hold))
    end do
  end subroutine

  !> Precipitation efficiency: the mean of Fritsch & Chappell's (1980) function of the wind
  !! shear over the cloud and Zhang & Fritsch's (1986) function of the cloud-base height,
  !! each within 0.2-0.9 (Kain & Fritsch 1993).
  subroutine precipitation_efficiency(env, src, pl, pef)
    type(environment), intent(in) :: env
    type(source_layer), intent(in) :: src
    type(plume), intent(in) :: pl
    real(rk), intent(out) :: pef(:)
    integer :: j, k, n
    real(rk) :: shear, e_shear, cbh, ratio, e_base
    do j = 1, size(pef)
      shear = 0.0
      n = 0
      do k = src%k_lcl(j), pl%k_top(j) - 1
        shear = shear + sqrt((env%u(j, k + 1) - env%u(j, k)) ** 2 + (env%v(j, k + 1) - env%v(j, k)) ** 2) &
                / (env%z(j, k + 1) - env%z(j, k))
        n = n + 1
      end do
      shear = 1.0e3 * shear / real(max(n, 1))   ! 1e-3 s-1
      e_shear = max(min(1.591 - 0.639 * shear + 0.0953 * shear ** 2 - 0.00496 * shear ** 3, 0.9), 0.2)
      cbh = src%z_lcl(j) * 3.281e-3                ! kft
      if (cbh < 3.0) then
        ratio = 0.02
      else if (cbh > 25.0) then
        ratio = 2.4
      else
        ratio = 0.96729352 + cbh * (-0.70034167 + cbh * (0.162179896 + cbh * (-1.2569798e-2 &
                + cbh * (4.2772e-4 - cbh * 5.44e-6))))
      end if
      e_base = max(min(1.0 / (1.0 + ratio), 0.9), 0.2)
      pef(j) = 0.5 * (e_shear + e_base)
    end do
  end subroutine
end module kernel_scales
