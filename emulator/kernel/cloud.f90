!> The cloud above its equilibrium level (Kain & Fritsch 1993): the updraft's mass flux
!! falls linearly in pressure from the equilibrium-temperature level to zero at the cloud
!! top, all of it detraining; entrainment there keeps each level's dilution factor; the
!! precipitation follows the reduced mass flux. A shallow cloud's mass flux falls so from its
!! LCL level, or from its source layer's top where that is higher (measured against MSKF:
!! kernel/README.md step 14).
module kernel_cloud
  use kernel_constants
  use kernel_environment
  use kernel_updraft
  use kernel_source
  implicit none
  private
  public :: taper, precipitation

contains

  subroutine taper(env, src, pl, deep)
    type(environment), intent(in) :: env
    type(source_layer), intent(in) :: src
    type(plume), intent(inout) :: pl
    logical, intent(in) :: deep(:)
    integer :: m, nz, j, k
    real(rk), allocatable :: k_from(:), rate(:), depth(:)
    real(rk) :: inside, at_top, mu_new, eu_new
    m = size(pl%k_top)
    nz = env%nz
    allocate(k_from(m), rate(m), depth(m))
    do j = 1, m
      k_from(j) = real(merge(max(pl%k_etl(j), src%k_lcl(j) - 1), &
                             max(src%k_lcl(j), src%top(j)), deep(j)))
      depth(j) = 0.0
    end do
    do k = 1, nz
      do j = 1, m
        depth(j) = depth(j) + merge(env%dp(j, k), 0.0, real(k) > k_from(j) .and. k <= pl%k_top(j))
      end do
    end do
    do j = 1, m
      rate(j) = pl%mu(j, max(int(k_from(j)), 1)) / max(depth(j), 1.0)
    end do
    do k = 2, nz
      do j = 1, m
        inside = merge(1.0, 0.0, real(k) > k_from(j) .and. k < pl%k_top(j))
        at_top = merge(1.0, 0.0, k == pl%k_top(j))
        mu_new = pl%mu(j, k - 1) - env%dp(j, k) * rate(j)
        eu_new = mu_new * (1.0 - 1.0 / pl%dilution(j, k))
        pl%eu(j, k) = inside * eu_new + (1.0 - inside - at_top) * pl%eu(j, k)
        pl%du(j, k) = inside * (pl%mu(j, k - 1) - mu_new + eu_new) + at_top * pl%mu(j, k - 1) &
                      + (1.0 - inside - at_top) * pl%du(j, k)
        pl%mu(j, k) = inside * mu_new + (1.0 - inside - at_top) * pl%mu(j, k)
        pl%det_l(j, k) = merge(pl%du(j, k) * pl%ql(j, k), pl%det_l(j, k), inside + at_top > 0.0)
        pl%det_i(j, k) = merge(pl%du(j, k) * pl%qi(j, k), pl%det_i(j, k), inside + at_top > 0.0)
        ! the precipitation formed at a level comes with the mass flux entering it
        pl%mu_in(j, k) = merge(pl%mu(j, k - 1), pl%mu_in(j, k), real(k) >= k_from(j) + 2.0 &
                               .and. k <= pl%k_top(j))
      end do
    end do
  end subroutine

  !> Precipitation formed at each level per unit cloud-base mass flux (liquid + ice).
  subroutine precipitation(pl, rain)
    type(plume), intent(in) :: pl
    real(rk), intent(out) :: rain(:, :)
    integer :: j, k
    do k = 1, size(rain, 2)
      do j = 1, size(rain, 1)
        rain(j, k) = (pl%fall_l(j, k) + pl%fall_i(j, k)) * pl%mu_in(j, k)
      end do
    end do
  end subroutine
end module kernel_cloud
