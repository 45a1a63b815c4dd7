//! The CUDA memory pool. candle allocates every tensor with `cuMemAllocAsync` from the device's
//! default pool, whose release threshold is 0: at each synchronisation (a loss read back, a
//! frame copied out) the pool hands its free memory back to the driver, and the next step maps
//! it in again, gigabytes a step for training at batch 32. Keeping it, as PyTorch's caching
//! allocator does, makes the steady state allocation-free.

use candle_core::Device;

/// Sets the release threshold of `device`'s default memory pool to "never" (no-op on the CPU
/// and in builds without CUDA). `CIAK_CUDA_POOL=release` keeps the driver's default, for
/// comparisons.
pub fn keep_pool_memory(device: &Device) -> candle_core::Result<()> {
    if std::env::var("CIAK_CUDA_POOL").is_ok_and(|v| v == "release") {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        use candle_core::cuda_backend::cudarc::driver::{result, sys};
        let ctx = d.cuda_stream().context().clone();
        let err = |e: result::DriverError| candle_core::Error::Msg(format!("CUDA memory pool: {e:?}"));
        ctx.bind_to_thread().map_err(err)?;
        let mut threshold = u64::MAX;
        // SAFETY: the device handle comes from a live context; the attribute takes a u64
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device()).map_err(err)?;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .map_err(err)?;
        }
    }
    let _ = device;
    Ok(())
}
