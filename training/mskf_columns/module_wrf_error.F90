! What the standalone MSKF build needs of WRF's frame/module_wrf_error.F, for a program that
! runs the scheme outside WRF: messages go to standard error, and a fatal error stops the
! program with a non-zero status. (In WRF these are external subroutines next to the module.)
module module_wrf_error
  implicit none
  character(len=256) :: wrf_err_message
end module module_wrf_error

subroutine wrf_message(str)
  character(len=*), intent(in) :: str
  write (0, '(a)') trim(str)
end subroutine wrf_message

subroutine wrf_debug(level, str)
  integer, intent(in) :: level
  character(len=*), intent(in) :: str
  if (level < 0) write (0, '(a)') trim(str)
end subroutine wrf_debug

subroutine wrf_error_fatal(str)
  character(len=*), intent(in) :: str
  write (0, '(a)') 'mskf_columns: fatal error in MSKF: '//trim(str)
  error stop 3
end subroutine wrf_error_fatal
