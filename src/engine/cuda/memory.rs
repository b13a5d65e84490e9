//! Device memory as plain allocations addressed by offset: the engine keeps a handful of large
//! buffers (parameters, gradients, moments, activations) and passes kernels and cuBLASLt raw
//! device addresses into them, the way llm.c does. Everything runs on the context's legacy
//! default stream and copies are synchronous, so no events or stream bookkeeping are needed.

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{cudaError_enum, CUdeviceptr};
use std::marker::PhantomData;

/// `len` elements of `T` in device memory, zeroed at allocation, freed on drop.
pub(super) struct DevBuf<T> {
    ptr: CUdeviceptr,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Copy> DevBuf<T> {
    pub fn zeros(len: usize) -> Result<DevBuf<T>, DriverError> {
        let bytes = len * size_of::<T>();
        let ptr = if bytes == 0 {
            0
        } else {
            // SAFETY: a fresh allocation of `bytes`, zeroed before anyone reads it.
            unsafe {
                let ptr = result::malloc_sync(bytes)?;
                if let Err(e) = result::memset_d8_sync(ptr, 0, bytes) {
                    let _ = result::free_sync(ptr);
                    return Err(e);
                }
                ptr
            }
        };
        Ok(DevBuf {
            ptr,
            len,
            _elem: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The device address of element `offset` (which may be `len`, one past the end).
    pub fn at(&self, offset: usize) -> u64 {
        assert!(
            offset <= self.len,
            "device offset {offset} past {}",
            self.len
        );
        self.ptr + (offset * size_of::<T>()) as u64
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Copies `src` to elements `offset..offset + src.len()`.
    pub fn upload_at(&mut self, offset: usize, src: &[T]) -> Result<(), DriverError> {
        assert!(offset + src.len() <= self.len, "upload past the end");
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination range lies inside this allocation (checked above).
        unsafe { result::memcpy_htod_sync(self.at(offset), src) }
    }

    pub fn upload(&mut self, src: &[T]) -> Result<(), DriverError> {
        self.upload_at(0, src)
    }

    /// Copies elements `offset..offset + dst.len()` to `dst`, after the work queued before.
    pub fn download_at(&self, offset: usize, dst: &mut [T]) -> Result<(), DriverError> {
        assert!(offset + dst.len() <= self.len, "download past the end");
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: the source range lies inside this allocation (checked above).
        unsafe { result::memcpy_dtoh_sync(dst, self.at(offset)) }
    }

    pub fn to_vec(&self) -> Result<Vec<T>, DriverError>
    where
        T: Default,
    {
        let mut v = vec![T::default(); self.len];
        self.download_at(0, &mut v)?;
        Ok(v)
    }

    pub fn zero(&mut self) -> Result<(), DriverError> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: clears exactly this allocation.
        unsafe { result::memset_d8_sync(self.ptr, 0, self.len * size_of::<T>()) }
    }
}

impl<T> Drop for DevBuf<T> {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: allocated by malloc_sync, freed once. A failure here (a dead context) has
            // nowhere to go.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Whether a driver error is the device running out of memory.
pub(super) fn is_out_of_memory(e: &DriverError) -> bool {
    e.0 == cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
}
