! Runs WRF's own MSKF_CPS (cu_physics = 11) on a set of independent columns, once, as WRF's
! cumulus driver calls it on a fresh start (mskf_init, then NCA = -100 so every column is
! evaluated): trigger 1, CUDT 0 (STEPCU 1), warm_rain false, every moisture tendency on,
! KF_EDRATES 1, no aerosol coupling. The columns are laid out as one tile row (i = column,
! j = 1), so MSKF's horizontal loops visit each column once.
!
! Usage: mskf_columns INPUT OUTPUT [REPEAT]
! With REPEAT > 1 the call is made that many times on the same input (for benchmarks); the
! wall time of the fastest MSKF_CPS call is printed as "mskf_cps_seconds <t>".
! INPUT (stream, native byte order): int32 ncol, nz; float32 dx, dt; then float32 arrays,
! column index fastest, in this order:
!   (ncol, nz):   U V TH T QV DZ8W PCPS RHO PI W0AVG
!   (ncol, nz+1): W
!   (ncol):       HFX UST PBLH ZOL XLAND
! OUTPUT: float32 arrays in this order:
!   (ncol, nz):   RTHCUTEN RQVCUTEN RQCCUTEN RQRCUTEN RQICUTEN RQSCUTEN RUCUTEN RVCUTEN
!                 CLDFRA_DP CLDFRA_SH QC_CU QI_CU UDR_KF DDR_KF UER_KF DER_KF W0AVG
!   (ncol):       RAINCV PRATEC NCA CUTOP CUBOT TIMEC_KF
program mskf_columns
  use module_cu_mskf, only: mskf_cps, mskf_init
  implicit none
  ! WRF's constants (share/module_model_constants.F), as the driver passes them.
  real, parameter :: r_d = 287., r_v = 461.6, cp = 7.*r_d/2., g = 9.81
  real, parameter :: ep_1 = r_v/r_d - 1., ep_2 = r_d/r_v
  real, parameter :: xlv0 = 3.15e6, xlv1 = 2370., xls0 = 2.905e6, xls1 = 259.532
  real, parameter :: svp1 = 0.6112, svp2 = 17.67, svp3 = 29.65, svpt0 = 273.15
  integer, parameter :: n_in3 = 10, n_out3 = 17, n_out2 = 6
  character(len=4096) :: in_path, out_path
  integer :: ncol, nz, unit, status, k, repeat, icall
  integer(8) :: tick0, tick1, rate
  real(8) :: fastest
  character(len=32) :: arg
  real :: dx, dt
  real, allocatable :: in3(:, :, :, :), w(:, :, :), in2(:, :, :)
  real, allocatable :: out3(:, :, :, :), out2(:, :, :), extra(:, :, :, :), ainc(:, :)
  logical, allocatable :: active(:, :)

  if (command_argument_count() < 2 .or. command_argument_count() > 3) then
    write (0, '(a)') 'usage: mskf_columns INPUT OUTPUT [REPEAT]'
    error stop 2
  end if
  call get_command_argument(1, in_path)
  call get_command_argument(2, out_path)
  repeat = 1
  if (command_argument_count() == 3) then
    call get_command_argument(3, arg)
    read (arg, *, iostat=status) repeat
    if (status /= 0 .or. repeat < 1) call fail('REPEAT must be a positive integer')
  end if

  open (newunit=unit, file=in_path, access='stream', form='unformatted', status='old', &
        action='read', iostat=status)
  if (status /= 0) call fail('cannot open '//trim(in_path))
  read (unit, iostat=status) ncol, nz, dx, dt
  if (status /= 0 .or. ncol < 1 .or. nz < 2) call fail('bad header in '//trim(in_path))
  ! Memory k runs to nz + 1 as in WRF (full levels); the scheme works on 1..nz.
  allocate (in3(ncol, nz + 1, 1, n_in3), w(ncol, nz + 1, 1), in2(ncol, 1, 5))
  allocate (out3(ncol, nz + 1, 1, n_out3), out2(ncol, 1, n_out2), extra(ncol, nz + 1, 1, 11))
  allocate (ainc(ncol, 1), active(ncol, 1))
  in3 = 0.
  do k = 1, n_in3
    read (unit, iostat=status) in3(:, 1:nz, 1, k)
    if (status /= 0) call fail('truncated input '//trim(in_path))
  end do
  read (unit, iostat=status) w
  if (status /= 0) call fail('truncated input '//trim(in_path))
  do k = 1, 5
    read (unit, iostat=status) in2(:, 1, k)
    if (status /= 0) call fail('truncated input '//trim(in_path))
  end do
  close (unit)

  fastest = huge(1.d0)
  do icall = 1, repeat
    out3 = 0.; out2 = 0.; extra = 0.; ainc = 0.; active = .false.
    call mskf_init(out3(:, :, :, 1), out3(:, :, :, 2), out3(:, :, :, 3), out3(:, :, :, 4), &
                   out3(:, :, :, 5), out3(:, :, :, 6), out2(:, :, 3), out3(:, :, :, 17), &
                   1, 1, svp1, svp2, svp3, svpt0, 1, .false., .true., &
                   1, ncol + 1, 1, 2, 1, nz + 1, 1, ncol, 1, 1, 1, nz + 1, 1, ncol, 1, 1, 1, nz, &
                   out3(:, :, :, 7), out3(:, :, :, 8))
    out3(:, :, :, 17) = in3(:, :, :, 10)  ! W0AVG as passed in

    call system_clock(tick0, rate)
    call mskf_cps(ids=1, ide=ncol + 1, jds=1, jde=2, kds=1, kde=nz + 1, &
                  ims=1, ime=ncol, jms=1, jme=1, kms=1, kme=nz + 1, &
                  its=1, ite=ncol, jts=1, jte=1, kts=1, kte=nz, &
                  trigger=1, dt=dt, ktau=1, dx=dx, cudt=0., adapt_step_flag=.false., &
                  rho=in3(:, :, :, 8), raincv=out2(:, :, 1), pratec=out2(:, :, 2), nca=out2(:, :, 3), &
                  u=in3(:, :, :, 1), v=in3(:, :, :, 2), th=in3(:, :, :, 3), t=in3(:, :, :, 4), w=w, &
                  dz8w=in3(:, :, :, 6), pcps=in3(:, :, :, 7), pi=in3(:, :, :, 9), &
                  w0avg=out3(:, :, :, 17), xlv0=xlv0, xlv1=xlv1, xls0=xls0, xls1=xls1, &
                  cp=cp, r=r_d, g=g, ep1=ep_1, ep2=ep_2, svp1=svp1, svp2=svp2, svp3=svp3, &
                  svpt0=svpt0, stepcu=1, cu_act_flag=active, warm_rain=.false., &
                  cutop=out2(:, :, 4), cubot=out2(:, :, 5), qv=in3(:, :, :, 5), &
                  f_qv=.true., f_qc=.true., f_qr=.true., f_qi=.true., f_qs=.true., &
                  rthcuten=out3(:, :, :, 1), rqvcuten=out3(:, :, :, 2), rqccuten=out3(:, :, :, 3), &
                  rqrcuten=out3(:, :, :, 4), rqicuten=out3(:, :, :, 5), rqscuten=out3(:, :, :, 6), &
                  rqvften=extra(:, :, :, 1), &
                  cldfra_dp_kf=out3(:, :, :, 9), cldfra_sh_kf=out3(:, :, :, 10), &
                  qc_kf=out3(:, :, :, 11), qi_kf=out3(:, :, :, 12), &
                  qr_kf=extra(:, :, :, 2), qs_kf=extra(:, :, :, 3), nc_kf=extra(:, :, :, 4), &
                  ni_kf=extra(:, :, :, 5), nr_kf=extra(:, :, :, 6), ns_kf=extra(:, :, :, 7), &
                  ccn_kf=extra(:, :, :, 8), ainc_frac=ainc, &
                  udr_kf=out3(:, :, :, 13), ddr_kf=out3(:, :, :, 14), &
                  uer_kf=out3(:, :, :, 15), der_kf=out3(:, :, :, 16), &
                  timec_kf=out2(:, :, 6), kf_edrates=1, &
                  zol=in2(:, :, 4), hfx=in2(:, :, 1), ust=in2(:, :, 2), pblh=in2(:, :, 3), &
                  no_src_types_cu=1, aercu_fct=1., aercu_opt=0, &
                  efcs=extra(:, :, :, 9), efis=extra(:, :, :, 10), efss=extra(:, :, :, 11), &
                  rucuten=out3(:, :, :, 7), rvcuten=out3(:, :, :, 8), xland=in2(:, :, 5))
    call system_clock(tick1)
    fastest = min(fastest, real(tick1 - tick0, 8) / real(rate, 8))
  end do
  if (repeat > 1) write (*, '(a, es12.5)') 'mskf_cps_seconds ', fastest

  open (newunit=unit, file=out_path, access='stream', form='unformatted', status='replace', &
        action='write', iostat=status)
  if (status /= 0) call fail('cannot write '//trim(out_path))
  do k = 1, n_out3
    write (unit) out3(:, 1:nz, 1, k)
  end do
  do k = 1, n_out2
    write (unit) out2(:, 1, k)
  end do
  close (unit)

contains
  subroutine fail(message)
    character(len=*), intent(in) :: message
    write (0, '(a)') 'mskf_columns: '//message
    error stop 2
  end subroutine fail
end program mskf_columns
