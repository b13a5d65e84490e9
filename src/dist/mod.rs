//! Data-parallel training: which rank this process is, and the collective that sums gradients
//! across ranks.
//!
//! A run of W ranks does what one process does with the same flags: the iteration's
//! `gradient_accumulation_steps` micro-batches are split between the ranks (rank r runs global
//! micro-steps r*G/W .. (r+1)*G/W, each drawing the batch one process would draw there), every
//! rank scales its gradients by 1/G, and the collective sums them. After the sum every rank holds
//! the same gradients, so the same clipping and AdamW step keep the parameters bit-identical on
//! every rank (checked at each evaluation and at the end, see [`fingerprint`]).
//!
//! With ZeRO-1 (`zero_stage=1`) the sum is split in two: a reduce-scatter leaves each rank the
//! summed gradients of its part of the parameters ([`shard_bounds`]), each rank updates that part
//! with the AdamW moments it alone keeps, and an all-gather shares the new parameters.
//!
//! - [`env`] reads the rank from the launcher's environment (torchrun, Slurm, mpirun, or
//!   `nanogpt launch`).
//! - [`ring`] is a TCP ring (reduce-scatter, all-gather) between processes, for CPU ranks and the tests here. It
//!   is not NCCL: it moves every byte through the kernel's TCP stack, which is fine for a few
//!   CPU processes and far too slow for GPUs.
//! - [`nccl`] sums GPU ranks' gradients in device memory (the CUDA engine opens it through
//!   `Engine::use_device_collective`).

pub mod env;
pub mod nccl;
pub mod ring;

pub use env::World;

use anyhow::Result;

/// Elements per alignment unit of [`shard_bounds`]: every part but the last starts and ends on
/// a multiple of it, so the CPU engine's per-chunk gradient-norm sums (chunks of 2^14) never
/// straddle two ranks' parts, and a ZeRO-1 run adds them as one process does.
pub const SHARD_ALIGN: usize = 1 << 14;

/// How a buffer of `n` elements is split between `w` ranks: rank c's part is
/// `bounds[c]..bounds[c + 1]`, contiguous, as equal as whole [`SHARD_ALIGN`] units allow (a
/// buffer smaller than one unit is all the last rank's). The same split serves every all-reduce
/// and ZeRO-1's shards, so both add each element in the same order.
pub fn shard_bounds(n: usize, w: usize) -> Vec<usize> {
    let units = n.div_ceil(SHARD_ALIGN);
    (0..=w)
        .map(|c| (c * units / w * SHARD_ALIGN).min(n))
        .collect()
}

/// Moves buffers between the ranks of a run. Every rank calls each method in the same order
/// with the same lengths and bounds (`w + 1` part boundaries, as [`shard_bounds`] makes).
pub trait Collective {
    fn world(&self) -> &World;
    /// Sums every rank's `buf`, each part on its own rank: afterwards rank c's part
    /// `buf[bounds[c]..bounds[c + 1]]` holds the sum over the ranks, added in a fixed order (so
    /// a rerun gives the same bits); the rest of `buf` holds partial sums.
    fn reduce_scatter_sum(&mut self, buf: &mut [f32], bounds: &[usize]) -> Result<()>;
    /// Copies each rank's part of `buf` (bytes `bounds[c]..bounds[c + 1]` from rank c) to every
    /// rank.
    fn all_gather_bytes(&mut self, buf: &mut [u8], bounds: &[usize]) -> Result<()>;
    /// Copies each rank's `part` (rank c's being bytes `bounds[c]..bounds[c + 1]` of the whole)
    /// into rank 0's `whole`; the other ranks pass an empty `whole` and need no room for the
    /// rest.
    fn gather_bytes(&mut self, part: &[u8], whole: &mut [u8], bounds: &[usize]) -> Result<()>;
    /// `buf` becomes the element-wise sum of every rank's `buf`, identical on every rank: a
    /// reduce-scatter then an all-gather over [`shard_bounds`].
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let bounds = shard_bounds(buf.len(), self.world().size);
        self.reduce_scatter_sum(buf, &bounds)?;
        all_gather(self, buf, &bounds)
    }
}

/// [`Collective::all_gather_bytes`] for a buffer of plain numbers, `bounds` counted in elements.
pub fn all_gather<T: bytemuck::Pod, C: Collective + ?Sized>(
    comm: &mut C,
    buf: &mut [T],
    bounds: &[usize],
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let bytes: Vec<usize> = bounds.iter().map(|b| b * size).collect();
    comm.all_gather_bytes(bytemuck::cast_slice_mut(buf), &bytes)
}

/// [`Collective::gather_bytes`] for plain numbers, `bounds` counted in elements.
pub fn gather<T: bytemuck::Pod, C: Collective + ?Sized>(
    comm: &mut C,
    part: &[T],
    whole: &mut [T],
    bounds: &[usize],
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let bytes: Vec<usize> = bounds.iter().map(|b| b * size).collect();
    comm.gather_bytes(
        bytemuck::cast_slice(part),
        bytemuck::cast_slice_mut(whole),
        &bytes,
    )
}

/// A fingerprint of a buffer's exact bits, as two floats that sum exactly across ranks (each
/// below 2^24): ranks compare them to check that they hold the same parameters.
pub fn fingerprint(buf: &[f32]) -> [f32; 2] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in buf {
        h = (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = h ^ (h >> 29);
    [(h & 0xff_ffff) as f32, ((h >> 24) & 0xff_ffff) as f32]
}

/// Checks that every rank holds the buffer whose fingerprint this rank computed: each rank puts
/// its fingerprint in its own slot, the sum shows them all.
pub fn check_same_on_every_rank(comm: &mut dyn Collective, buf: &[f32], what: &str) -> Result<()> {
    let (rank, size) = (comm.world().rank, comm.world().size);
    let mut slots = vec![0.0f32; 2 * size];
    slots[2 * rank..2 * rank + 2].copy_from_slice(&fingerprint(buf));
    comm.all_reduce_sum(&mut slots)?;
    if let Some(r) = (0..size).find(|&r| slots[2 * r..2 * r + 2] != slots[..2]) {
        anyhow::bail!(
            "rank {r}'s {what} differ from rank 0's: the ranks diverged (a bug; please report it with the command line)"
        );
    }
    Ok(())
}
