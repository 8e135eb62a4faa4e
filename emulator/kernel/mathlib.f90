!> Exponential and logarithm in plain single-precision arithmetic, so that loops over columns
!! vectorise and a column gets the same bits whatever its place in a vector (library vector
!! functions and their scalar versions may differ in the last bit). Relative error < 2e-7
!! (exp) and absolute error < 4e-7 (log) over the ranges used.
module kernel_math
  use kernel_constants, only: rk
  implicit none
  private
  public :: kexp, klog, kpow, above, at_least, blend

contains

  !> e^x: x = n ln 2 + r (Cody-Waite split of ln 2), e^r by its Taylor series to r^7,
  !! 2^n set in the exponent bits. x clipped to [-87, 88].
  elemental real(rk) function kexp(x)
    real(rk), intent(in) :: x
    real(rk) :: t, r, p
    integer :: n
    t = max(min(x, 88.0), -87.0)
    n = int(t * 1.44269504 + sign(0.5, t))
    r = (t - real(n) * 0.693145752) - real(n) * 1.42860677e-6
    p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166666667 + r * (0.0416666667 + r * (0.00833333333 &
        + r * (0.00138888889 + r * 0.000198412698))))))
    kexp = p * transfer(ishft(n + 127, 23), p)
  end function

  !> ln x for x > 0 (normal numbers): x = 2^e m with m in [0.707, 1.414), ln m by the series
  !! of atanh((m - 1) / (m + 1)).
  elemental real(rk) function klog(x)
    real(rk), intent(in) :: x
    integer :: b, e, k
    real(rk) :: m, s, s2
    b = transfer(x, b)
    e = ishft(b, -23) - 127
    m = transfer(ior(iand(b, 8388607), 1065353216), m)
    k = int(m * 0.707106781)
    e = e + k
    m = m * (1.0 - 0.5 * real(k))
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    klog = real(e) * 0.693147181 &
           + 2.0 * s * (1.0 + s2 * (0.333333333 + s2 * (0.2 + s2 * (0.142857143 + s2 * 0.111111111))))
  end function

  !> x^y = e^(y ln x) for x > 0.
  elemental real(rk) function kpow(x, y)
    real(rk), intent(in) :: x, y
    kpow = kexp(y * klog(x))
  end function
  !> 1 if a > b, else 0, as arithmetic (compilers keep merge() of values as branches that
  !! stop vectorisation).
  elemental real(rk) function above(a, b)
    real(rk), intent(in) :: a, b
    above = 0.5 - sign(0.5, b - a)
  end function

  !> 1 if a >= b, else 0.
  elemental real(rk) function at_least(a, b)
    real(rk), intent(in) :: a, b
    at_least = 0.5 + sign(0.5, a - b)
  end function

  !> w x + (1 - w) y for a weight w of 0 or 1 (x and y finite).
  elemental real(rk) function blend(x, y, w)
    real(rk), intent(in) :: x, y, w
    blend = w * x + (1.0 - w) * y
  end function
end module kernel_math
