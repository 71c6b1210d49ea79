//! glibc allocator settings for libtorch on the CPU.
//!
//! libtorch allocates every activation afresh. With glibc's defaults, blocks of tens of MB are
//! served by mmap and returned by munmap, so each batch pays page faults to map its
//! activations again, and freed heap tops are trimmed back to the kernel too. Measured here:
//! N=5, batch 256, CPU, went from most of the time in page faults to several times faster
//! once glibc keeps freed memory (see docs/PERFORMANCE.md). The cost is that the process keeps
//! its peak heap instead of returning it.

use std::sync::Once;

/// Largest value glibc accepts for the trim threshold (an int).
const NEVER_TRIM: libc::c_int = libc::c_int::MAX;

static TUNED: Once = Once::new();

/// Stops glibc from returning large freed blocks to the kernel: no mmap for large blocks, no
/// trimming of the heap. Once per process; `COMBO_MALLOC=default` in the environment leaves
/// glibc's defaults (for measuring, or for hosts that tune malloc themselves).
pub fn tune_for_inference() {
    TUNED.call_once(|| {
        if std::env::var("COMBO_MALLOC").is_ok_and(|v| v == "default") {
            log::info!("COMBO_MALLOC=default: glibc malloc left at its defaults");
            return;
        }
        // SAFETY: mallopt only changes glibc's allocation thresholds; it is safe to call at any
        // time from any thread, and blocks already allocated are unaffected.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, NEVER_TRIM) == 1
        };
        if ok {
            log::debug!("glibc malloc: mmap of large blocks and heap trimming turned off");
        } else {
            log::warn!("glibc rejected the allocator settings; CPU inference may be slower");
        }
    });
}
