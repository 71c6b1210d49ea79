//! libtorch's CPU tensors from a caching allocator (`cpu_allocator.cpp`).
//!
//! Without it, every batch on the inference thread maps, faults in and unmaps its activations
//! (glibc serves large blocks with mmap, and a thread's own arena unmaps its heaps once they
//! are empty): the model ran at 30-40 % of its speed. With it, the blocks of one batch serve
//! the next. The host's malloc is left alone; only libtorch's CPU tensors come through here.
#![allow(unsafe_code)]

use std::ffi::c_int;

unsafe extern "C" {
    fn combo_cpu_allocator_install(limit_bytes: usize) -> c_int;
    fn combo_cpu_allocator_counters(out: *mut [u64; 6]);
    fn combo_cpu_allocator_reset_peak();
}

/// `COMBO_CPU_ALLOCATOR=default` in the environment keeps libtorch's own allocator (to
/// measure the difference, or if a host installs its own).
const OPT_OUT: &str = "COMBO_CPU_ALLOCATOR";

/// Makes the caching allocator libtorch's CPU allocator for this process (once) and lets it
/// keep up to `limit_bytes` of freed blocks (the largest limit asked for holds). Returns
/// whether it is in use.
pub fn install(limit_bytes: usize) -> bool {
    if std::env::var(OPT_OUT).is_ok_and(|value| value == "default") {
        log::debug!("{OPT_OUT}=default: libtorch keeps its own CPU allocator");
        return false;
    }
    // SAFETY: takes a plain integer; the C++ side catches every exception.
    let installed = unsafe { combo_cpu_allocator_install(limit_bytes) } == 0;
    if installed {
        log::debug!("libtorch CPU tensors: caching allocator, up to {} MB kept", limit_bytes >> 20);
    } else {
        log::warn!("libtorch refused the caching CPU allocator; CPU inference will be slower");
    }
    installed
}

/// What the caching allocator did since it was installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Large blocks served from the cache.
    pub hits: u64,
    /// Large blocks newly allocated.
    pub misses: u64,
    /// Cached blocks given back to the system to stay under the limit.
    pub released: u64,
    pub cached_bytes: u64,
    pub live_bytes: u64,
    pub peak_live_bytes: u64,
}

pub fn counters() -> CacheCounters {
    let mut out = [0u64; 6];
    // SAFETY: writes exactly six integers into `out`.
    unsafe { combo_cpu_allocator_counters(&mut out) };
    let [hits, misses, released, cached_bytes, live_bytes, peak_live_bytes] = out;
    CacheCounters { hits, misses, released, cached_bytes, live_bytes, peak_live_bytes }
}

/// Starts measuring `peak_live_bytes` afresh from the bytes live now.
pub fn reset_peak() {
    // SAFETY: no arguments; a no-op when not installed.
    unsafe { combo_cpu_allocator_reset_peak() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn freed_large_tensors_are_reused_and_values_are_intact() {
        assert!(install(64 << 20));
        let before = counters();
        for round in 0..4 {
            let tensor = Tensor::full([1 << 18], round as f64, (Kind::Float, Device::Cpu));
            assert_eq!(tensor.sum(Kind::Float).double_value(&[]), round as f64 * (1 << 18) as f64);
        }
        let after = counters();
        // One megabyte each: the first may be new, the later ones come from the cache.
        assert!(after.hits >= before.hits + 3, "{before:?} -> {after:?}");
        assert!(after.cached_bytes <= 64 << 20 || after.cached_bytes <= before.cached_bytes);
    }
}
