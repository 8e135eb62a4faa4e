!> The drafts' initial tendencies of potential temperature, vapour, and detrained liquid and
!! ice, per unit cloud-base updraft mass flux (kg m-2 s-1), before the closure scales them
!! (Kain & Fritsch 1993; Kain 2004, section 2d): air detrained from the updraft and the
!! downdraft, environmental air entrained into them, and the compensating environmental
!! motion that conserves mass at each level, in upstream flux form: a layer gains the
!! properties of the air that the net convective mass flux F draws through its top and
!! bottom (subsidence where positive). F through the top of level k is the updraft's net
!! intake up to level k plus the downdraft's flux from level k + 1, so that every layer's
!! mass balances exactly (the source layer's air above the LCL counts where it enters).
module kernel_tendency
  use kernel_constants
  use kernel_math
  use kernel_environment
  use kernel_updraft
  use kernel_downdraft
  implicit none
  private
  public :: initial_tendencies

contains

  subroutine initial_tendencies(env, pl, dn, heating, moistening, liquid, ice)
    type(environment), intent(in) :: env
    type(plume), intent(in) :: pl
    type(draft), intent(in) :: dn
    real(rk), intent(out), dimension(:, :) :: heating, moistening, liquid, ice
    integer :: m, nz, j, k
    real(rk), allocatable :: f_top(:, :), theta(:, :), net(:)
    real(rk) :: f_bot, th_top, th_bot, q_top, q_bot, exner, gdp, theta_u
    m = size(heating, 1)
    nz = env%nz
    allocate(f_top(m, 0:nz), theta(m, nz), net(m))
    do j = 1, m
      f_top(j, 0) = 0.0
      net(j) = 0.0
    end do
    do k = 1, nz
      do j = 1, m
        theta(j, k) = env%t(j, k) * kexp(kappa * env%lnp(j, k))
        net(j) = net(j) + pl%eu(j, k) - pl%du(j, k)
        ! none through the cloud top and above (where the sums cancel up to rounding)
        if (k < nz) then
          f_top(j, k) = merge(net(j) + dn%md(j, k + 1), 0.0, k < pl%k_top(j))
        else
          f_top(j, k) = 0.0
        end if
      end do
    end do
    do k = 1, nz
      do j = 1, m
        gdp = g / env%dp(j, k)
        exner = kexp(kappa * env%lnp(j, k))
        theta_u = pl%t(j, k) * exner
        f_bot = f_top(j, k - 1)
        ! upstream values at the interfaces
        if (k < nz) then
          th_top = merge(theta(j, k + 1), theta(j, k), f_top(j, k) > 0.0)
          q_top = merge(env%q(j, k + 1), env%q(j, k), f_top(j, k) > 0.0)
        else
          th_top = theta(j, k)
          q_top = env%q(j, k)
        end if
        if (k > 1) then
          th_bot = merge(theta(j, k), theta(j, k - 1), f_bot > 0.0)
          q_bot = merge(env%q(j, k), env%q(j, k - 1), f_bot > 0.0)
        else
          th_bot = theta(j, k)
          q_bot = env%q(j, k)
        end if
        heating(j, k) = gdp * (pl%du(j, k) * theta_u + dn%dd(j, k) * dn%theta(j, k) &
                        - (pl%eu(j, k) + dn%ed(j, k)) * theta(j, k) + f_top(j, k) * th_top - f_bot * th_bot)
        moistening(j, k) = gdp * (pl%du(j, k) * pl%qv(j, k) + dn%dd(j, k) * dn%q(j, k) &
                           - (pl%eu(j, k) + dn%ed(j, k)) * env%q(j, k) + f_top(j, k) * q_top - f_bot * q_bot)
        liquid(j, k) = gdp * pl%det_l(j, k)
        ice(j, k) = gdp * pl%det_i(j, k)
      end do
    end do
  end subroutine
end module kernel_tendency
