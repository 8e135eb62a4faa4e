!> mlcu_fatal for programs outside WRF (the mini-driver, the Python extension): print the
!> message with the MPI rank and stop every rank. Not part of libmlcu_bridge.a, because inside
!> WRF the patched code supplies an mlcu_fatal that calls wrf_error_fatal.
subroutine mlcu_fatal(message)
   use, intrinsic :: iso_fortran_env, only: error_unit
   use mpi, only: mpi_comm_world, mpi_initialized, mpi_finalized, mpi_comm_rank, mpi_abort
   implicit none
   character(len=*), intent(in) :: message
   logical :: started, finished
   integer :: rank, ierr

   call mpi_initialized(started, ierr)
   call mpi_finalized(finished, ierr)
   if (started .and. .not. finished) then
      call mpi_comm_rank(mpi_comm_world, rank, ierr)
      write (error_unit, '(a,i0,2a)') 'mlcu FATAL (rank ', rank, '): ', trim(message)
      flush (error_unit)
      ! Abort, not stop: the other ranks may be waiting in a collective and would hang.
      call mpi_abort(mpi_comm_world, 1, ierr)
   end if
   write (error_unit, '(2a)') 'mlcu FATAL: ', trim(message)
   flush (error_unit)
   error stop 1
end subroutine mlcu_fatal
