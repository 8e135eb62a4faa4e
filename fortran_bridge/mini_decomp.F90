!> Domain decomposition of the mini-driver, in WRF's terms: the domain ids..ide, jds..jde
!> (staggered ends, mass points 1..ide-1) is split into one patch per MPI rank on an
!> ntasks_x x ntasks_y grid; each patch has memory with a halo around it and is cut into tiles
!> along j. The tile's mass-point end is min(patch end, ide-1), as WRF hands physics its tiles.
module mini_decomp
   implicit none
   private

   public :: decomposition, decompose, tile_bounds

   type :: decomposition
      integer :: ids, ide, jds, jde, kds, kde            !! domain (staggered ends)
      integer :: ims, ime, jms, jme, kms, kme            !! this rank's memory
      integer :: ips, ipe, jps, jpe                      !! this rank's patch
      integer :: ntasks_x, ntasks_y, numtiles
   end type decomposition

contains

   !> The patch of `rank` among `nprocs` for a domain of nx x ny mass columns and nz mass levels.
   function decompose(nx, ny, nz, nprocs, rank, halo, numtiles) result(d)
      integer, intent(in) :: nx, ny, nz, nprocs, rank, halo, numtiles
      type(decomposition) :: d
      integer :: px, py

      d%ids = 1; d%ide = nx + 1
      d%jds = 1; d%jde = ny + 1
      d%kds = 1; d%kde = nz + 1
      call task_grid(nprocs, d%ntasks_x, d%ntasks_y)
      px = mod(rank, d%ntasks_x)
      py = rank/d%ntasks_x
      call split(nx, d%ntasks_x, px, d%ips, d%ipe)
      call split(ny, d%ntasks_y, py, d%jps, d%jpe)
      ! The last patch in each direction owns the staggered end point, as in WRF.
      if (d%ipe == nx) d%ipe = d%ide
      if (d%jpe == ny) d%jpe = d%jde
      d%ims = d%ips - halo; d%ime = d%ipe + halo
      d%jms = d%jps - halo; d%jme = d%jpe + halo
      d%kms = d%kds; d%kme = d%kde
      d%numtiles = max(1, min(numtiles, d%jpe - d%jps + 1))
   end function decompose

   !> Tile `t` (1..numtiles) of the patch: its..ite, jts..jte on mass points.
   subroutine tile_bounds(d, t, its, ite, jts, jte)
      type(decomposition), intent(in) :: d
      integer, intent(in) :: t
      integer, intent(out) :: its, ite, jts, jte
      integer :: jend

      jend = min(d%jpe, d%jde - 1)
      call split(jend - d%jps + 1, d%numtiles, t - 1, jts, jte)
      jts = jts + d%jps - 1
      jte = jte + d%jps - 1
      its = d%ips
      ite = min(d%ipe, d%ide - 1)
   end subroutine tile_bounds

   !> nprocs = ntasks_x * ntasks_y with the factors as close as possible, ntasks_x <= ntasks_y.
   subroutine task_grid(nprocs, ntasks_x, ntasks_y)
      integer, intent(in) :: nprocs
      integer, intent(out) :: ntasks_x, ntasks_y
      integer :: f

      ntasks_x = 1
      do f = 1, nprocs
         if (f*f > nprocs) exit
         if (mod(nprocs, f) == 0) ntasks_x = f
      end do
      ntasks_y = nprocs/ntasks_x
   end subroutine task_grid

   !> Part p (0-based) of n points split in `parts` nearly equal ranges; the first mod(n, parts)
   !> parts get one point more.
   subroutine split(n, parts, p, first, last)
      integer, intent(in) :: n, parts, p
      integer, intent(out) :: first, last

      first = p*(n/parts) + min(p, mod(n, parts)) + 1
      last = first + n/parts - 1
      if (p < mod(n, parts)) last = last + 1
   end subroutine split

end module mini_decomp
