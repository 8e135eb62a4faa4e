!> Mini-driver: runs module_cu_mlcu the way WRF's cumulus driver does, on fields read from a
!> wrfout (or MSKF oracle) file, without WRF.
!>
!>   mpirun -np N mini_driver --input wrfout.nc --model model.onnx --out cu.nc [options]
!>
!> Each rank holds one patch (memory with a halo), calls the module once per tile (tiles run
!> as OpenMP threads), and rank 0 writes the gathered outputs with wrfout's dimensions and WRF
!> names. Options:
!>   --inputs-out F    also write the arrays handed to the driver (before the call)
!>   --tiles N         tiles per patch (2)          --halo N     halo width (3)
!>   --threads N       inference threads per rank (1)
!>   --device D, --nan-policy P, --ood-policy P     runtime settings (auto, fatal, predict)
!>   --levels N        use the lowest N mass levels of the file
!>   --steps N         cumulus calls (NCA counted down by DT per model step in between) (1)
!>   --hold-from-file  start from the file's NCA and cumulus outputs (else NCA = -100)
!>   --nan-column I J  put a NaN into T_PHY of column (I, J)
!> Prints one JSON line of counters and timings (rank 0).
program mini_driver
   use, intrinsic :: iso_fortran_env, only: error_unit, int64
   use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
   use mpi
   !$ use omp_lib, only: omp_get_max_threads
   use module_cu_mlcu, only: cu_mlcu_init, cu_mlcu_driver, cu_mlcu_finalize, cu_mlcu_counter
   use mini_decomp, only: decomposition, decompose, tile_bounds
   use mini_io
   implicit none

   character(len=*), parameter :: counters(8) = [character(len=9) :: 'evaluated', 'held', &
                                  'triggered', 'deep', 'shallow', 'nan', 'ood', 'fallback']
   character(len=1024) :: input = ' ', model = ' ', output = ' ', inputs_out = ' '
   character(len=1024) :: device = 'auto', nan_policy = 'fatal', ood_policy = 'predict'
   integer :: tiles = 2, threads = 1, levels = 0, steps = 1, halo = 3, nan_i = 0, nan_j = 0
   logical :: hold_from_file = .false.

   type(domain_info) :: info
   type(decomposition) :: d
   real, allocatable :: a3(:, :, :, :), a2(:, :, :)
   integer, allocatable :: fallback(:, :)
   integer(int64) :: totals(size(counters)), local(size(counters))
   character(len=2048) :: msg
   character(len=1024) :: key
   integer :: argi
   double precision :: t_start, t_init, t_run
   integer :: rank, nprocs, provided, ierr, status, ncid, nz, step, t, its, ite, jts, jte, n, nthreads

   call mpi_init_thread(mpi_thread_funneled, provided, ierr)
   call mpi_comm_rank(mpi_comm_world, rank, ierr)
   call mpi_comm_size(mpi_comm_world, nprocs, ierr)
   call parse_arguments()

   call open_input(trim(input), ncid, info)
   nz = info%nz_file
   if (levels > 0) nz = levels
   if (nz > info%nz_file) call fail('--levels is larger than the file''s bottom_top')
   d = decompose(info%nx, info%ny, nz, nprocs, rank, halo, tiles)
   if (d%ntasks_x > info%nx .or. d%ntasks_y > info%ny) call fail('more ranks than grid rows')

   allocate (a3(d%ims:d%ime, d%kms:d%kme, d%jms:d%jme, size(names3)), &
             a2(d%ims:d%ime, d%jms:d%jme, size(names2)), fallback(d%ims:d%ime, d%jms:d%jme))
   a3 = 0.
   a2 = 0.
   fallback = 0
   a2(:, :, inca) = -100.   ! what MSKF's init sets: every column is evaluated at the first call
   call read_inputs(ncid, info, d, nz, a3, a2)
   if (hold_from_file) call read_state(ncid, info, d, nz, a3, a2)
   call close_file(ncid)
   if (nan_i > 0) then
      if (nan_i >= d%ims .and. nan_i <= d%ime .and. nan_j >= d%jms .and. nan_j <= d%jme) &
         a3(nan_i, d%kds, nan_j, it_phy) = ieee_value(0., ieee_quiet_nan)
   end if
   if (inputs_out /= ' ') call write_fields(trim(inputs_out), 'mini_driver inputs', .true.)

   t_start = mpi_wtime()
   call cu_mlcu_init(trim(model), threads, trim(device), trim(nan_policy), trim(ood_policy), &
                     d%kds, nz, status, msg)
   call all_or_none(status, msg)
   t_init = mpi_wtime() - t_start

   call mpi_barrier(mpi_comm_world, ierr)
   t_start = mpi_wtime()
   do step = 1, steps
      ! a3 and a2 hold the arrays in the order of names3 and names2 (mini_io), which is the
      ! order of the driver's arguments.
      !$omp parallel do private(t, its, ite, jts, jte) schedule(static, 1)
      do t = 1, d%numtiles
         call tile_bounds(d, t, its, ite, jts, jte)
         call cu_mlcu_driver(d%ids, d%ide, d%jds, d%jde, d%kds, d%kde, &
                             d%ims, d%ime, d%jms, d%jme, d%kms, d%kme, &
                             its, ite, jts, jte, d%kds, nz, info%dt, info%dx, info%cudt, info%stepcu, &
                             a3(:, :, :, 1), a3(:, :, :, 2), a3(:, :, :, 3), a3(:, :, :, 4), &
                             a3(:, :, :, 5), a3(:, :, :, 6), a3(:, :, :, 7), a3(:, :, :, 8), &
                             a3(:, :, :, 9), a3(:, :, :, 10), a3(:, :, :, 11), a3(:, :, :, 12), &
                             a3(:, :, :, 13), a3(:, :, :, 14), &
                             a2(:, :, 1), a2(:, :, 2), a2(:, :, 3), a2(:, :, 4), a2(:, :, 5), &
                             a3(:, :, :, 15), a3(:, :, :, 16), a3(:, :, :, 17), a3(:, :, :, 18), &
                             a3(:, :, :, 19), a3(:, :, :, 20), a3(:, :, :, 21), a3(:, :, :, 22), &
                             a2(:, :, 6), a2(:, :, 7), a2(:, :, 8), a2(:, :, 9), a2(:, :, 10), &
                             a3(:, :, :, 23), a3(:, :, :, 24), a3(:, :, :, 25), a3(:, :, :, 26), &
                             fallback)
      end do
      !$omp end parallel do
      ! Between cumulus calls WRF counts the hold down by DT every model step.
      if (step < steps) then
         do n = 1, info%stepcu
            where (a2(:, :, inca) >= 0.5*info%dt) a2(:, :, inca) = a2(:, :, inca) - info%dt
         end do
      end if
   end do
   call mpi_barrier(mpi_comm_world, ierr)
   t_run = mpi_wtime() - t_start

   do n = 1, size(counters)
      local(n) = cu_mlcu_counter(trim(counters(n)))
   end do
   call mpi_reduce(local, totals, size(counters), mpi_integer8, mpi_sum, 0, mpi_comm_world, ierr)
   if (output /= ' ') call write_fields(trim(output), 'mini_driver cumulus outputs', .false.)
   call cu_mlcu_finalize(status, msg)
   call all_or_none(status, msg)
   if (rank == 0) call summary()
   call mpi_finalize(ierr)

contains

   subroutine parse_arguments()
      argi = 1
      do while (argi <= command_argument_count())
         call get_command_argument(argi, key)
         select case (key)
         case ('--input'); input = next_value()
         case ('--model'); model = next_value()
         case ('--out'); output = next_value()
         case ('--inputs-out'); inputs_out = next_value()
         case ('--device'); device = next_value()
         case ('--nan-policy'); nan_policy = next_value()
         case ('--ood-policy'); ood_policy = next_value()
         case ('--tiles'); tiles = next_number()
         case ('--threads'); threads = next_number()
         case ('--levels'); levels = next_number()
         case ('--steps'); steps = next_number()
         case ('--halo'); halo = next_number()
         case ('--nan-column'); nan_i = next_number(); nan_j = next_number()
         case ('--hold-from-file'); hold_from_file = .true.
         case default
            call fail('unknown argument '//trim(key)//' (see the header of mini_driver.F90)')
         end select
         argi = argi + 1
      end do
      if (input == ' ' .or. model == ' ') call fail('usage: mini_driver --input FILE --model MODEL [--out FILE] ...')
      if (steps < 1 .or. tiles < 1 .or. halo < 0) call fail('--steps and --tiles must be >= 1, --halo >= 0')
   end subroutine parse_arguments

   function next_value() result(v)
      character(len=1024) :: v

      argi = argi + 1
      if (argi > command_argument_count()) call fail('missing value after '//trim(key))
      call get_command_argument(argi, v)
   end function next_value

   integer function next_number()
      character(len=1024) :: text
      integer :: ios

      text = next_value()
      read (text, *, iostat=ios) next_number
      if (ios /= 0) call fail('not a number after '//trim(key))
   end function next_number

   subroutine fail(message)
      character(len=*), intent(in) :: message
      external :: mlcu_fatal

      call mlcu_fatal('mini_driver: '//message)
   end subroutine fail

   !> Collective error check: every rank prints its own error (or that another rank failed)
   !> before the job is aborted, so the reason is in every rank's output.
   subroutine all_or_none(status, message)
      integer, intent(in) :: status
      character(len=*), intent(in) :: message
      integer :: failed, e

      call mpi_allreduce(min(status, 1), failed, 1, mpi_integer, mpi_sum, mpi_comm_world, e)
      if (failed == 0) return
      if (status /= 0) then
         write (error_unit, '(a,i0,2a)') 'mlcu FATAL (rank ', rank, '): ', trim(message)
      else
         write (error_unit, '(a,i0,a,i0,a)') 'mlcu FATAL (rank ', rank, '): stopping, ', failed, &
            ' rank(s) failed'
      end if
      flush (error_unit)
      call mpi_barrier(mpi_comm_world, e)
      call mpi_abort(mpi_comm_world, 1, e)
   end subroutine all_or_none

   !> Gather every rank's tile columns of the tables and write them (rank 0). Inputs: the
   !> leading input entries and the initial state; outputs: W0AVG and everything after it.
   subroutine write_fields(path, title, inputs)
      character(len=*), intent(in) :: path, title
      logical, intent(in) :: inputs
      real, allocatable :: g(:, :, :)
      integer :: n, nk, ncid

      if (rank == 0) call create_output(path, info, nz, title, nprocs, d%numtiles, ncid)
      do n = 1, size(names3)
         if (.not. inputs .and. n < iw0avg) cycle
         nk = nz
         if (n == iw) nk = nz + 1
         call gather(a3(:, 1:nk, :, n), g)
         if (rank == 0) call put3(ncid, trim(names3(n)), g)
      end do
      do n = 1, size(names2)
         if (.not. inputs .and. n <= n_inputs2) cycle
         call gather(reshape(a2(:, :, n), [d%ime - d%ims + 1, 1, d%jme - d%jms + 1]), g)
         if (rank == 0) call put2(ncid, trim(names2(n)), g(:, 1, :))
      end do
      if (.not. inputs) then
         call gather(reshape(real(fallback), [d%ime - d%ims + 1, 1, d%jme - d%jms + 1]), g)
         if (rank == 0) call put2i(ncid, 'FALLBACK', nint(g(:, 1, :)))
      end if
      if (rank == 0) call close_file(ncid)
   end subroutine write_fields

   !> The compute columns of memory array x (i, k, j) from all ranks into g(nx, nk, ny) on rank 0.
   subroutine gather(x, g)
      real, intent(in) :: x(d%ims:, :, d%jms:)
      real, allocatable, intent(inout) :: g(:, :, :)
      real, allocatable :: recv(:)
      integer :: counts(nprocs), displs(nprocs), r, nk, e
      type(decomposition) :: p

      nk = size(x, 2)
      do r = 0, nprocs - 1
         p = decompose(info%nx, info%ny, nz, nprocs, r, halo, tiles)
         counts(r + 1) = (min(p%ipe, info%nx) - p%ips + 1)*nk*(min(p%jpe, info%ny) - p%jps + 1)
      end do
      displs(1) = 0
      do r = 2, nprocs
         displs(r) = displs(r - 1) + counts(r - 1)
      end do
      allocate (recv(sum(counts)))
      call mpi_gatherv(pack(x(d%ips:min(d%ipe, info%nx), :, d%jps:min(d%jpe, info%ny)), .true.), &
                       counts(rank + 1), mpi_real, recv, counts, displs, mpi_real, 0, mpi_comm_world, e)
      if (rank /= 0) return
      if (allocated(g)) deallocate (g)
      allocate (g(info%nx, nk, info%ny))
      do r = 0, nprocs - 1
         p = decompose(info%nx, info%ny, nz, nprocs, r, halo, tiles)
         g(p%ips:min(p%ipe, info%nx), :, p%jps:min(p%jpe, info%ny)) = reshape(recv(displs(r + 1) + 1: &
            displs(r + 1) + counts(r + 1)), [min(p%ipe, info%nx) - p%ips + 1, nk, min(p%jpe, info%ny) - p%jps + 1])
      end do
   end subroutine gather

   !> One readable line, then the same as JSON (for scripts).
   subroutine summary()
      character(len=4096) :: line
      character(len=32) :: num
      double precision :: rate
      integer :: n

      nthreads = 1
      !$ nthreads = omp_get_max_threads()
      rate = real(info%nx, kind(t_run))*info%ny*steps/max(t_run, 1d-9)
      write (*, '(a,i0,a,i0,a,i0,a,i0,a,i0,a,i0,a,i0,a)') 'mini_driver: ', nprocs, ' rank(s) (', &
         d%ntasks_x, ' x ', d%ntasks_y, ' patches, ', d%numtiles, ' tiles each), ', &
         info%nx*info%ny, ' columns x ', nz, ' levels, ', steps, ' call(s)'
      write (*, '(a,8(i0,a))') 'mini_driver: ', totals(1), ' evaluated, ', totals(2), ' held, ', &
         totals(3), ' triggered (', totals(4), ' deep, ', totals(5), ' shallow), ', totals(6), &
         ' with NaN, ', totals(7), ' out of distribution, ', totals(8), ' fallback'
      write (*, '(a,f6.2,a,f8.3,a,i0,a)') 'mini_driver: start-up', t_init, ' s, cumulus calls', &
         t_run, ' s (', nint(rate), ' columns/s)'
      write (line, '(a,i0,a,i0,a,i0,a,i0,a,i0,a,i0,a,i0,a,i0)') '{"ranks": ', nprocs, &
         ', "ntasks_x": ', d%ntasks_x, ', "ntasks_y": ', d%ntasks_y, ', "tiles_per_rank": ', &
         d%numtiles, ', "omp_threads": ', nthreads, ', "columns": ', info%nx*info%ny, &
         ', "levels": ', nz, ', "steps": ', steps
      do n = 1, size(counters)
         write (num, '(i0)') totals(n)
         line = trim(line)//', "'//trim(counters(n))//'": '//trim(num)
      end do
      write (num, '(f0.6)') t_init
      line = trim(line)//', "init_s": '//trim(zero_lead(num))
      write (num, '(f0.6)') t_run
      line = trim(line)//', "run_s": '//trim(zero_lead(num))
      write (num, '(f0.1)') rate
      line = trim(line)//', "columns_per_s": '//trim(zero_lead(num))//'}'
      write (*, '(a)') trim(line)
   end subroutine summary

   !> JSON numbers need a digit before the decimal point (f0 writes ".5").
   function zero_lead(s) result(r)
      character(len=*), intent(in) :: s
      character(len=len(s) + 1) :: r

      r = s
      if (s(1:1) == '.') r = '0'//s
   end function zero_lead

end program mini_driver
