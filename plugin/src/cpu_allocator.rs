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
    fn combo_cpu_allocator_leave(limit_bytes: usize);
}

/// `COMBO_CPU_ALLOCATOR=default` in the environment keeps libtorch's own allocator (to
/// measure the difference, or if a host installs its own).
const OPT_OUT: &str = "COMBO_CPU_ALLOCATOR";

/// One user of the caching allocator (an engine, a command). While any user lives, freed
/// blocks are kept up to the largest limit among them; when the last is dropped, the cache
/// is emptied back to the system.
#[derive(Debug)]
pub struct CacheUser {
    limit_bytes: usize,
}

impl CacheUser {
    /// Makes the caching allocator libtorch's CPU allocator for this process (once) and joins
    /// it with `limit_bytes`. `None` when it is not in use (opted out, or refused).
    pub fn join(limit_bytes: usize) -> Option<Self> {
        if std::env::var(OPT_OUT).is_ok_and(|value| value == "default") {
            log::debug!("{OPT_OUT}=default: libtorch keeps its own CPU allocator");
            return None;
        }
        // SAFETY: takes a plain integer; the C++ side catches every exception.
        if unsafe { combo_cpu_allocator_install(limit_bytes) } != 0 {
            log::warn!("libtorch refused the caching CPU allocator; CPU inference will be slower");
            return None;
        }
        log::debug!("libtorch CPU tensors: caching allocator, up to {} MB kept", limit_bytes >> 20);
        Some(Self { limit_bytes })
    }

    /// Changes this user's limit.
    pub fn set_limit(&mut self, limit_bytes: usize) {
        // SAFETY: both calls take plain integers; the allocator is installed (self exists).
        unsafe {
            combo_cpu_allocator_install(limit_bytes);
            combo_cpu_allocator_leave(self.limit_bytes);
        }
        self.limit_bytes = limit_bytes;
    }
}

impl Drop for CacheUser {
    fn drop(&mut self) {
        // SAFETY: pairs the install that made this user.
        unsafe { combo_cpu_allocator_leave(self.limit_bytes) };
    }
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
        let _user = CacheUser::join(64 << 20).expect("the caching allocator installs");
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

    #[test]
    fn the_cache_empties_when_its_last_user_leaves() {
        // Other tests of this process may hold users; this one checks its own limit's effect
        // only when it is alone, and always that leaving never grows the cache.
        let user = CacheUser::join(32 << 20).expect("the caching allocator installs");
        drop(Tensor::zeros([1 << 20], (Kind::Float, Device::Cpu)));
        let with_user = counters();
        drop(user);
        let after = counters();
        assert!(after.cached_bytes <= with_user.cached_bytes.max(32 << 20));
    }
}
