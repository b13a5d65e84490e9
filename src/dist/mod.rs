//! Data-parallel training: which rank this process is, and the collective that sums gradients
//! across ranks.
//!
//! A run of W ranks does what one process does with the same flags: the iteration's
//! `gradient_accumulation_steps` micro-batches are split between the ranks (rank r runs global
//! micro-steps r*G/W .. (r+1)*G/W, each drawing the batch one process would draw there), every
//! rank scales its gradients by 1/G, and the collective sums them. After the sum every rank holds
//! the same gradients, so the same clipping and AdamW step keep the parameters bit-identical on
//! every rank (checked at each log line, see [`fingerprint`]).
//!
//! - [`env`] reads the rank from the launcher's environment (torchrun, Slurm, mpirun, or
//!   `nanogpt launch`).
//! - [`ring`] is a TCP ring all-reduce between processes, for CPU ranks and the tests here. It
//!   is not NCCL: it moves every byte through the kernel's TCP stack, which is fine for a few
//!   CPU processes and far too slow for GPUs.

pub mod env;
pub mod ring;

pub use env::World;

use anyhow::Result;

/// Sums buffers across the ranks of a run. Every rank calls each method in the same order with
/// the same lengths; the result is identical on every rank.
pub trait Collective {
    fn world(&self) -> &World;
    /// `buf` becomes the element-wise sum of every rank's `buf`, added in a fixed order (so a
    /// rerun gives the same bits).
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
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
