//! NCCL for GPU ranks: the gradients are summed where they are, in device memory, by NVIDIA's
//! collective library (NVLink within a node, InfiniBand or TCP between nodes). The ranks still
//! join through the TCP ring first ([`super::ring`]): it checks their settings, carries NCCL's
//! unique id from rank 0 to the others, and keeps the few host-side sums (the loss, the stop
//! flag, the parameter fingerprints).
//!
//! NCCL is loaded at run time like the rest of CUDA (cudarc's dynamic loading), so the binary
//! runs without it; a run that needs it and cannot find it says what to install.

use super::Collective;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::result::{event, stream};
use cudarc::driver::sys::{CUevent, CUevent_flags, CUevent_wait_flags, CUstream};
use cudarc::nccl::{result, sys};
use std::ffi::c_void;
use std::mem::MaybeUninit;

/// Bytes in NCCL's unique id (`ncclUniqueId`).
const ID_BYTES: usize = 128;

/// This rank's NCCL communicator, on the CUDA context current on this thread, with a stream of
/// its own for sums that overlap the engine's work on the legacy default stream.
pub struct Nccl {
    comm: sys::ncclComm_t,
    /// Non-blocking: no implicit synchronisation with the legacy default stream.
    stream: CUstream,
    /// Recorded on the default stream before a sum starts, waited for by `stream`.
    inputs_ready: CUevent,
    /// Recorded on `stream` after the last sum, waited for by the default stream.
    sums_done: CUevent,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `Nccl` is only
// reached through `&mut` or the engine that owns it.
unsafe impl Send for Nccl {}

impl Nccl {
    /// Opens the communicator of the ranks `ring` joined (every rank calls it at once): rank 0
    /// makes the unique id, the ring hands it to the others. Call it with this rank's GPU's
    /// context current.
    pub fn connect(ring: &mut dyn Collective) -> Result<Nccl> {
        let (rank, size) = (ring.world().rank, ring.world().size);
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            bail!(
                "data-parallel GPU training needs NCCL (libnccl.so), which was not found: `pip install nvidia-nccl-cu13`, then put a libnccl.so link to its lib/libnccl.so.2 in a folder on LD_LIBRARY_PATH"
            );
        }
        let mut id = [0u8; ID_BYTES];
        if rank == 0 {
            let made = result::get_uniqueid()
                .map_err(|e| anyhow!("NCCL could not make its unique id ({e:?}): check the network interfaces NCCL may use (NCCL_SOCKET_IFNAME)"))?;
            for (b, c) in id.iter_mut().zip(made.internal) {
                *b = c as u8;
            }
        }
        let mut bounds = vec![ID_BYTES; size + 1];
        bounds[0] = 0;
        ring.all_gather_bytes(&mut id, &bounds)?;
        let mut shared = sys::ncclUniqueId {
            internal: [0; ID_BYTES],
        };
        for (c, b) in shared.internal.iter_mut().zip(id) {
            *c = b as std::ffi::c_char;
        }
        let mut comm = MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL before it is read; the id came from rank 0.
        unsafe { result::comm_init_rank(comm.as_mut_ptr(), size as i32, shared, rank as i32) }
            .map_err(|e| {
                anyhow!(
                    "NCCL could not join rank {rank} of {size} ({e:?}): two ranks on one GPU are refused (set LOCAL_RANK, one rank per GPU); NCCL_DEBUG=INFO says more"
                )
            })?;
        let cuda = |what: &str, e: cudarc::driver::DriverError| {
            anyhow!("opening NCCL's {what} failed ({e:?})")
        };
        let timing_off = CUevent_flags::CU_EVENT_DISABLE_TIMING;
        Ok(Nccl {
            // SAFETY: comm_init_rank succeeded, so it wrote the communicator.
            comm: unsafe { comm.assume_init() },
            stream: stream::create(stream::StreamKind::NonBlocking)
                .map_err(|e| cuda("stream", e))?,
            inputs_ready: event::create(timing_off).map_err(|e| cuda("event", e))?,
            sums_done: event::create(timing_off).map_err(|e| cuda("event", e))?,
        })
    }

    /// Starts summing `count` f32 at device address `ptr` over the ranks, in place, on NCCL's
    /// own stream, once the work queued so far on the legacy default stream (what wrote them) is
    /// done; returns at once, so the engine's next kernels run meanwhile. They must not touch
    /// these values until [`Nccl::join`].
    ///
    /// # Safety
    /// `ptr` must address `count` f32 of device memory in the current context.
    pub unsafe fn start_sum_f32(&mut self, ptr: u64, count: usize) -> Result<()> {
        let failed = |e| anyhow!("ordering NCCL's stream after the backward pass failed ({e:?})");
        event::record(self.inputs_ready, stream::null()).map_err(failed)?;
        stream::wait_event(
            self.stream,
            self.inputs_ready,
            CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
        )
        .map_err(failed)?;
        self.sum_on(ptr, count, self.stream as sys::cudaStream_t)
    }

    /// Makes the legacy default stream's later work wait for every sum started so far.
    pub fn join(&mut self) -> Result<()> {
        let failed = |e| anyhow!("waiting for NCCL's stream failed ({e:?})");
        // SAFETY: the stream and event are this communicator's, alive until drop.
        unsafe {
            event::record(self.sums_done, self.stream).map_err(failed)?;
            stream::wait_event(
                stream::null(),
                self.sums_done,
                CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
            .map_err(failed)
        }
    }

    /// `ncclAllReduce` (sum, in place) on `on`.
    ///
    /// # Safety
    /// As [`Nccl::start_sum_f32`].
    unsafe fn sum_on(&mut self, ptr: u64, count: usize, on: sys::cudaStream_t) -> Result<()> {
        result::all_reduce(
            ptr as *const c_void,
            ptr as *mut c_void,
            count,
            sys::ncclDataType_t::ncclFloat32,
            sys::ncclRedOp_t::ncclSum,
            self.comm,
            on,
        )
        .map(|_| ())
        .map_err(|e| anyhow!("NCCL's all-reduce of the gradients failed ({e:?}): a rank may have stopped; see the other ranks' errors"))
    }

    /// Sums `count` f32 at device address `ptr` over the ranks, in place, on the legacy default
    /// stream the CUDA engine runs everything on; returns when the sum is done.
    ///
    /// # Safety
    /// `ptr` must address `count` f32 of device memory in the current context.
    pub unsafe fn all_reduce_sum_f32(&mut self, ptr: u64, count: usize) -> Result<()> {
        self.sum_on(ptr, count, std::ptr::null_mut())?;
        cudarc::driver::result::ctx::synchronize()
            .map_err(|e| anyhow!("waiting for NCCL's all-reduce failed ({e:?})"))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator, stream and events were made in `connect` and are not used
        // after this; the stream's work is finished first.
        unsafe {
            let _ = stream::synchronize(self.stream);
            let _ = result::comm_destroy(self.comm);
            let _ = event::destroy(self.inputs_ready);
            let _ = event::destroy(self.sums_done);
            let _ = stream::destroy(self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{ring::Ring, World};

    /// Without libnccl.so (CI, this machine), joining says what to install instead of panicking
    /// in the loader. Where NCCL is installed the device check covers `connect`.
    #[test]
    fn missing_nccl_is_one_line_that_says_what_to_install() {
        // SAFETY: only tries to open the library.
        if unsafe { sys::is_culib_present() } {
            return;
        }
        let world = World {
            rank: 0,
            size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
        };
        let mut ring = Ring::connect(world, serde_json::json!({})).unwrap();
        let err = format!("{:#}", Nccl::connect(&mut ring).err().unwrap());
        assert!(err.contains("pip install nvidia-nccl-cu13"), "{err}");
    }
}
