//! The C ABI of the Combo Packet engine.
//!
//! Every exported function checks its pointer and length arguments, runs inside a panic
//! boundary, and returns a [`ComboStatus`]; the message of the last failure on the calling
//! thread is read with [`combo_last_error`]. Handles are opaque boxes owned by the caller
//! between `*_new` and `*_free`.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use combo_plugin::engine::{ContextRecord, FlowEnd, FlowRecord, Outcome, Prediction, Stats};
use combo_plugin::parse::{LinkType, Skip};
use combo_plugin::preprocess::Filter;
use combo_plugin::{Engine, EngineConfig, Error, MAX_TOP_K, Record, Worker};

/// ABI major version: changes when a function or struct changes incompatibly.
pub const COMBO_ABI_VERSION_MAJOR: u32 = 1;
/// ABI minor version: changes when functions are added.
pub const COMBO_ABI_VERSION_MINOR: u32 = 0;
/// Most classes a record lists (`top_ids`, `top_probs`).
pub const COMBO_MAX_TOP_K: usize = 5;
const _: () = assert!(COMBO_MAX_TOP_K == MAX_TOP_K);
/// `combo_worker_flush` flag: end every flow first, so each reports its verdict.
pub const COMBO_FLUSH_END_FLOWS: u32 = 1;

/// Result of every call. Values are stable across minor versions.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComboStatus {
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument is out of range (length, flag, index, not UTF-8).
    InvalidArgument = 2,
    /// The configuration could not be read or is invalid.
    Config = 3,
    /// The model card or weights could not be loaded.
    Model = 4,
    /// The configuration's pre-processing differs from the model's.
    Mismatch = 5,
    /// A file could not be read.
    Io = 6,
    /// The engine failed internally (inference thread, libtorch).
    Internal = 7,
    /// A bug inside the library was caught before it reached the caller.
    Panic = 8,
}

/// What happened to one packet given to `combo_worker_process`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComboOutcome {
    /// Parsed, kept and added to its flow.
    Accepted = 0,
    SkippedUnsupportedLink = 1,
    SkippedNonIp = 2,
    SkippedTruncated = 3,
    SkippedBadHeader = 4,
    SkippedFragment = 5,
    SkippedOtherTransport = 6,
    FilteredDns = 7,
    FilteredNtp = 8,
    FilteredNetbios = 9,
    FilteredEmptyTcp = 10,
}

/// Kind of a ComboRecord.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComboRecordKind {
    /// One context of N packets was classified.
    Context = 1,
    /// A flow ended; this is its verdict over all its contexts.
    Flow = 2,
}

/// Why a flow ended (flow records only).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComboFlowEnd {
    /// Not a flow record.
    None = 0,
    IdleTimeout = 1,
    /// Evicted because the flow table was full.
    Evicted = 2,
    /// Ended by `combo_worker_flush` with `COMBO_FLUSH_END_FLOWS`.
    Flushed = 3,
}

/// A flow's endpoints as first seen (`src` initiated).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComboTuple {
    /// 4 or 6.
    pub ip_version: u8,
    /// IANA protocol number: 6 TCP, 17 UDP.
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Network byte order; an IPv4 address uses the first 4 bytes.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

/// One result: a classified context or a flow verdict. A plain value; copy freely.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ComboRecord {
    pub kind: ComboRecordKind,
    pub flow_end: ComboFlowEnd,
    pub flow_id: u64,
    pub tuple: ComboTuple,
    /// Best class, or -1 for a flow none of whose contexts was classified.
    pub label_id: i32,
    /// Name of `label_id`, NUL-terminated, owned by the engine; NULL when `label_id` is -1.
    pub label: *const c_char,
    /// Probability of the best class, in [0, 1].
    pub confidence: f32,
    /// Entries used in `top_ids` / `top_probs`, best first.
    pub top_count: u32,
    pub top_ids: [u32; COMBO_MAX_TOP_K],
    pub top_probs: [f32; COMBO_MAX_TOP_K],
    /// Context: real packets in it (fewer than N for a padded short flow).
    /// Flow: packets accepted into the flow.
    pub packets: u64,
    /// Context: its index in the flow (0 first). Flow: contexts classified.
    pub contexts: u32,
    /// Context: capture time of its last packet. Flow: of its first packet. Nanoseconds since
    /// the Unix epoch.
    pub first_ts_nanos: u64,
    /// Context: as `first_ts_nanos`. Flow: capture time of its last packet.
    pub last_ts_nanos: u64,
    /// The caller's tag of the packet that completed the context, or of the flow's last one.
    pub user_tag: u64,
}

/// Counters (see the README). Once a worker is flushed,
/// `packets = accepted + skipped_* + filtered_*` and
/// `contexts = contexts_classified + contexts_dropped + contexts_failed`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ComboStats {
    pub packets: u64,
    pub accepted: u64,
    pub skipped_unsupported_link: u64,
    pub skipped_non_ip: u64,
    pub skipped_truncated: u64,
    pub skipped_bad_header: u64,
    pub skipped_fragment: u64,
    pub skipped_other_transport: u64,
    pub filtered_dns: u64,
    pub filtered_ntp: u64,
    pub filtered_netbios: u64,
    pub filtered_empty_tcp: u64,
    /// Accepted packets captured shorter than their length (snap length).
    pub snapped: u64,
    pub flows: u64,
    pub flows_ended: u64,
    pub flows_evicted: u64,
    pub contexts: u64,
    pub contexts_classified: u64,
    /// Dropped because the worker's ring was full (policy `drop`).
    pub contexts_dropped: u64,
    /// Their batch failed in the model.
    pub contexts_failed: u64,
    pub short_flows_padded: u64,
    pub short_flows_dropped: u64,
    /// Records discarded because the caller did not poll them in time.
    pub records_overflowed: u64,
    pub batches: u64,
}

/// Opaque engine handle.
pub struct ComboEngine {
    engine: Engine,
    labels: Arc<Vec<CString>>,
}

/// Opaque worker handle.
pub struct ComboWorker {
    worker: Worker,
    labels: Arc<Vec<CString>>,
    scratch: Vec<Record>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = message);
}

fn fail(status: ComboStatus, message: &str) -> ComboStatus {
    set_error(message);
    status
}

fn status_of(error: &Error) -> ComboStatus {
    match error {
        Error::Config(_) => ComboStatus::Config,
        Error::Model(_) | Error::Torch(_) => ComboStatus::Model,
        Error::Mismatch(_) => ComboStatus::Mismatch,
        Error::Io(_) => ComboStatus::Io,
        Error::Inference(_) => ComboStatus::Internal,
    }
}

/// Runs `body` so that no panic unwinds into C: a panic becomes `COMBO_STATUS_PANIC`.
fn boundary(body: impl FnOnce() -> ComboStatus) -> ComboStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(ComboStatus::Panic, &format!("internal error (panic): {what}"))
        }
    }
}

/// The runtime ABI version, `(major << 16) | minor`. A host checks the major part against
/// `COMBO_ABI_VERSION_MAJOR` before any other call.
#[unsafe(no_mangle)]
pub extern "C" fn combo_abi_version() -> u32 {
    (COMBO_ABI_VERSION_MAJOR << 16) | COMBO_ABI_VERSION_MINOR
}

/// Sends the library's log records of `max_level` and more important to `callback` (NULL:
/// none). Records come from any thread, the inference thread included; nothing on the
/// per-packet path logs above `COMBO_LOG_LEVEL_TRACE`. Thread-safe; the latest call wins.
///
/// # Safety
/// `callback` must be NULL or a function safe to call from any thread, with `user_data`,
/// until it is replaced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_set_log_callback(
    callback: ComboLogCallback,
    user_data: *mut std::ffi::c_void,
    max_level: ComboLogLevel,
) -> ComboStatus {
    boundary(|| {
        logging::set_callback(callback, user_data, max_level);
        ComboStatus::Ok
    })
}

/// The library's version, e.g. "0.1.0", static storage.
#[unsafe(no_mangle)]
pub extern "C" fn combo_version_string() -> *const c_char {
    static VERSION: &CStr = {
        let with_nul = concat!(env!("CARGO_PKG_VERSION"), "\0");
        match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
            Ok(version) => version,
            Err(_) => c"unknown",
        }
    };
    VERSION.as_ptr()
}

/// Copies the calling thread's last error message into `buffer` (NUL-terminated, cut to fit)
/// and returns the message's full length without the NUL. `buffer` may be NULL with
/// `capacity` 0 to ask for the length. Thread-safe.
///
/// # Safety
/// `buffer` must be NULL or point to `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_last_error(buffer: *mut c_char, capacity: usize) -> usize {
    catch_unwind(|| {
        LAST_ERROR.with(|slot| {
            let message = slot.borrow();
            let bytes = message.as_bytes();
            if !buffer.is_null() && capacity > 0 {
                let n = bytes.len().min(capacity - 1);
                // SAFETY: the caller guarantees `capacity` writable bytes at `buffer`; we write
                // n + 1 <= capacity of them, and `bytes` cannot overlap caller memory.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), n);
                    *buffer.add(n) = 0;
                }
            }
            bytes.len()
        })
    })
    .unwrap_or(0)
}

pub mod logging;

pub use logging::{ComboLogCallback, ComboLogLevel};

fn new_engine(config: Result<EngineConfig, Error>, out: *mut *mut ComboEngine) -> ComboStatus {
    let made = config.and_then(Engine::new);
    match made {
        Ok(engine) => {
            let labels = engine
                .labels()
                .iter()
                .map(|label| CString::new(label.replace('\0', " ")).unwrap_or_default())
                .collect();
            let handle = Box::new(ComboEngine { engine, labels: Arc::new(labels) });
            // SAFETY: callers checked `out` is non-null; it points to writable pointer storage
            // by the function's contract.
            unsafe { *out = Box::into_raw(handle) };
            ComboStatus::Ok
        }
        Err(e) => fail(status_of(&e), &e.to_string()),
    }
}

/// Creates an engine from a TOML configuration file (a relative `model.path` is relative to
/// the file). Loads the model and starts the inference thread. Thread-safe.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string; `out` must be NULL or point to storage for
/// one pointer, which receives the engine on success (untouched on failure).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_new_from_file(
    path: *const c_char,
    out: *mut *mut ComboEngine,
) -> ComboStatus {
    boundary(|| {
        if path.is_null() || out.is_null() {
            return fail(ComboStatus::NullArgument, "path and out must not be NULL");
        }
        // SAFETY: non-null and NUL-terminated by the caller's contract.
        let path = unsafe { CStr::from_ptr(path) };
        let Ok(path) = path.to_str() else {
            return fail(ComboStatus::InvalidArgument, "path is not UTF-8");
        };
        new_engine(EngineConfig::from_toml_file(Path::new(path)), out)
    })
}

/// Creates an engine from TOML text (a relative `model.path` is relative to the working
/// directory). Thread-safe.
///
/// # Safety
/// `toml` must be NULL or a NUL-terminated string; `out` as for
/// `combo_engine_new_from_file`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_new_from_toml(
    toml: *const c_char,
    out: *mut *mut ComboEngine,
) -> ComboStatus {
    boundary(|| {
        if toml.is_null() || out.is_null() {
            return fail(ComboStatus::NullArgument, "toml and out must not be NULL");
        }
        // SAFETY: non-null and NUL-terminated by the caller's contract.
        let text = unsafe { CStr::from_ptr(toml) };
        let Ok(text) = text.to_str() else {
            return fail(ComboStatus::InvalidArgument, "configuration is not UTF-8");
        };
        new_engine(EngineConfig::from_toml_str(text), out)
    })
}

/// Frees an engine. Workers still alive keep working and must still be freed; the inference
/// thread ends after the last of them. NULL is ignored.
///
/// # Safety
/// `engine` must be NULL or a pointer from `combo_engine_new_*` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_free(engine: *mut ComboEngine) {
    let _ = boundary(|| {
        if !engine.is_null() {
            // SAFETY: the pointer came from Box::into_raw in new_engine and is freed once.
            drop(unsafe { Box::from_raw(engine) });
        }
        ComboStatus::Ok
    });
}

/// Number of classes of the engine's model; 0 for NULL. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_label_count(engine: *const ComboEngine) -> u32 {
    // SAFETY: NULL or live by contract.
    match unsafe { engine.as_ref() } {
        Some(engine) => engine.labels.len() as u32,
        None => 0,
    }
}

/// Name of class `label_id`, owned by the engine; NULL for NULL or an id out of range.
/// Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_label_name(
    engine: *const ComboEngine,
    label_id: u32,
) -> *const c_char {
    // SAFETY: NULL or live by contract.
    let Some(engine) = (unsafe { engine.as_ref() }) else { return std::ptr::null() };
    engine.labels.get(label_id as usize).map_or(std::ptr::null(), |name| name.as_ptr())
}

/// Packets per context (N) of the engine's model; 0 for NULL. Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_packets_per_context(engine: *const ComboEngine) -> u32 {
    // SAFETY: NULL or live by contract.
    unsafe { engine.as_ref() }.map_or(0, |engine| engine.engine.packets_per_context() as u32)
}

/// Totals over the engine's workers: freed ones, and live ones as of their last flush (or
/// every 1024th poll). Thread-safe.
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_engine_stats(
    engine: *const ComboEngine,
    out: *mut ComboStats,
) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live/writable by contract.
        let (Some(engine), Some(out)) = (unsafe { engine.as_ref() }, unsafe { out.as_mut() })
        else {
            return fail(ComboStatus::NullArgument, "engine and out must not be NULL");
        };
        *out = convert_stats(&engine.engine.stats());
        ComboStatus::Ok
    })
}

/// Creates a worker: the packet path of one capture thread. Thread-safe (the engine may be
/// shared); the worker itself must be used by one thread at a time.
///
/// # Safety
/// `engine` must be NULL or a live engine; `out` NULL or storage for one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_new(
    engine: *const ComboEngine,
    out: *mut *mut ComboWorker,
) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live by contract.
        let Some(engine) = (unsafe { engine.as_ref() }) else {
            return fail(ComboStatus::NullArgument, "engine must not be NULL");
        };
        if out.is_null() {
            return fail(ComboStatus::NullArgument, "out must not be NULL");
        }
        let worker = ComboWorker {
            worker: engine.engine.worker(),
            labels: Arc::clone(&engine.labels),
            scratch: Vec::new(),
        };
        // SAFETY: `out` is non-null and writable by contract.
        unsafe { *out = Box::into_raw(Box::new(worker)) };
        ComboStatus::Ok
    })
}

/// Frees a worker after waiting for its in-flight contexts; records not polled are lost
/// (flush and poll first to keep them). NULL is ignored.
///
/// # Safety
/// `worker` must be NULL or a pointer from `combo_worker_new` not yet freed, not in use by
/// another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_free(worker: *mut ComboWorker) {
    let _ = boundary(|| {
        if !worker.is_null() {
            // SAFETY: the pointer came from Box::into_raw in combo_worker_new, freed once.
            drop(unsafe { Box::from_raw(worker) });
        }
        ComboStatus::Ok
    });
}

/// Hands one captured frame to the worker. `link_type` is the pcap LINKTYPE_* value,
/// `ts_nanos` the capture time in nanoseconds since the Unix epoch, `data` the `caplen`
/// captured bytes, `origlen` the length on the wire, `user_tag` any value, echoed in the
/// records this packet completes. `out_outcome` may be NULL. The bytes are not kept after
/// the call returns. Under the `drop` policy this never blocks on the model.
///
/// # Safety
/// `worker` must be NULL or a live worker used by no other thread; `data` must point to
/// `caplen` readable bytes (or be NULL with `caplen` 0); `out_outcome` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_process(
    worker: *mut ComboWorker,
    link_type: u32,
    ts_nanos: u64,
    data: *const u8,
    caplen: u32,
    origlen: u32,
    user_tag: u64,
    out_outcome: *mut ComboOutcome,
) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live and exclusively ours by contract.
        let Some(worker) = (unsafe { worker.as_mut() }) else {
            return fail(ComboStatus::NullArgument, "worker must not be NULL");
        };
        if data.is_null() && caplen > 0 {
            return fail(ComboStatus::NullArgument, "data is NULL but caplen > 0");
        }
        let frame: &[u8] = if caplen == 0 {
            &[]
        } else {
            // SAFETY: non-null with `caplen` readable bytes by contract.
            unsafe { std::slice::from_raw_parts(data, caplen as usize) }
        };
        let outcome =
            worker.worker.process(LinkType(link_type), ts_nanos, frame, origlen, user_tag);
        // SAFETY: NULL or writable by contract.
        if let Some(out) = unsafe { out_outcome.as_mut() } {
            *out = convert_outcome(outcome);
        }
        ComboStatus::Ok
    })
}

/// Copies up to `capacity` finished records, oldest first, into `records` and stores how many
/// in `out_count`. Never blocks.
///
/// # Safety
/// `worker` as for `combo_worker_process`; `records` must point to `capacity` writable
/// records (or be NULL with `capacity` 0); `out_count` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_poll(
    worker: *mut ComboWorker,
    records: *mut ComboRecord,
    capacity: usize,
    out_count: *mut usize,
) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live and exclusively ours by contract.
        let Some(worker) = (unsafe { worker.as_mut() }) else {
            return fail(ComboStatus::NullArgument, "worker must not be NULL");
        };
        if out_count.is_null() || (records.is_null() && capacity > 0) {
            return fail(ComboStatus::NullArgument, "records and out_count must not be NULL");
        }
        worker.scratch.clear();
        let n = worker.worker.poll(&mut worker.scratch, capacity);
        for (i, record) in worker.scratch.iter().enumerate() {
            let converted = convert_record(record, &worker.labels);
            // SAFETY: i < n <= capacity, and the caller provides `capacity` writable records.
            unsafe { records.add(i).write(converted) };
        }
        // SAFETY: non-null and writable by contract.
        unsafe { *out_count = n };
        ComboStatus::Ok
    })
}

/// Waits until every context this worker sent has a result (then poll them). With
/// `COMBO_FLUSH_END_FLOWS` in `flags`, first ends every flow so each reports its verdict
/// (end of a capture file, shutdown).
///
/// # Safety
/// `worker` as for `combo_worker_process`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_flush(worker: *mut ComboWorker, flags: u32) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live and exclusively ours by contract.
        let Some(worker) = (unsafe { worker.as_mut() }) else {
            return fail(ComboStatus::NullArgument, "worker must not be NULL");
        };
        if flags & !COMBO_FLUSH_END_FLOWS != 0 {
            return fail(ComboStatus::InvalidArgument, "unknown flush flag");
        }
        worker.worker.flush(flags & COMBO_FLUSH_END_FLOWS != 0);
        ComboStatus::Ok
    })
}

/// Tells the worker the capture time is now `now_nanos` even without packets, so idle flows
/// end on time on a quiet live link.
///
/// # Safety
/// `worker` as for `combo_worker_process`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_advance_clock(
    worker: *mut ComboWorker,
    now_nanos: u64,
) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live and exclusively ours by contract.
        let Some(worker) = (unsafe { worker.as_mut() }) else {
            return fail(ComboStatus::NullArgument, "worker must not be NULL");
        };
        worker.worker.advance_clock(now_nanos);
        ComboStatus::Ok
    })
}

/// This worker's counters, exact at the time of the call.
///
/// # Safety
/// `worker` NULL or live (not in use by another thread); `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn combo_worker_stats(
    worker: *const ComboWorker,
    out: *mut ComboStats,
) -> ComboStatus {
    boundary(|| {
        // SAFETY: NULL or live/writable by contract.
        let (Some(worker), Some(out)) = (unsafe { worker.as_ref() }, unsafe { out.as_mut() })
        else {
            return fail(ComboStatus::NullArgument, "worker and out must not be NULL");
        };
        *out = convert_stats(&worker.worker.stats());
        ComboStatus::Ok
    })
}

fn convert_outcome(outcome: Outcome) -> ComboOutcome {
    match outcome {
        Outcome::Accepted => ComboOutcome::Accepted,
        Outcome::Skipped(Skip::UnsupportedLink) => ComboOutcome::SkippedUnsupportedLink,
        Outcome::Skipped(Skip::NonIp) => ComboOutcome::SkippedNonIp,
        Outcome::Skipped(Skip::Truncated) => ComboOutcome::SkippedTruncated,
        Outcome::Skipped(Skip::BadHeader) => ComboOutcome::SkippedBadHeader,
        Outcome::Skipped(Skip::Fragment) => ComboOutcome::SkippedFragment,
        Outcome::Skipped(Skip::OtherTransport) => ComboOutcome::SkippedOtherTransport,
        Outcome::Filtered(Filter::Dns) => ComboOutcome::FilteredDns,
        Outcome::Filtered(Filter::Ntp) => ComboOutcome::FilteredNtp,
        Outcome::Filtered(Filter::Netbios) => ComboOutcome::FilteredNetbios,
        Outcome::Filtered(Filter::EmptyTcp) => ComboOutcome::FilteredEmptyTcp,
    }
}

fn convert_stats(stats: &Stats) -> ComboStats {
    ComboStats {
        packets: stats.packets,
        accepted: stats.accepted,
        skipped_unsupported_link: stats.skipped(Skip::UnsupportedLink),
        skipped_non_ip: stats.skipped(Skip::NonIp),
        skipped_truncated: stats.skipped(Skip::Truncated),
        skipped_bad_header: stats.skipped(Skip::BadHeader),
        skipped_fragment: stats.skipped(Skip::Fragment),
        skipped_other_transport: stats.skipped(Skip::OtherTransport),
        filtered_dns: stats.filtered(Filter::Dns),
        filtered_ntp: stats.filtered(Filter::Ntp),
        filtered_netbios: stats.filtered(Filter::Netbios),
        filtered_empty_tcp: stats.filtered(Filter::EmptyTcp),
        snapped: stats.snapped,
        flows: stats.flows,
        flows_ended: stats.flows_ended,
        flows_evicted: stats.flows_evicted,
        contexts: stats.contexts,
        contexts_classified: stats.contexts_classified,
        contexts_dropped: stats.contexts_dropped,
        contexts_failed: stats.contexts_failed,
        short_flows_padded: stats.short_flows_padded,
        short_flows_dropped: stats.short_flows_dropped,
        records_overflowed: stats.records_overflowed,
        batches: stats.batches,
    }
}

fn convert_tuple(tuple: &combo_plugin::flow::FiveTuple) -> ComboTuple {
    fn bytes(address: IpAddr) -> (u8, [u8; 16]) {
        let mut out = [0u8; 16];
        match address {
            IpAddr::V4(v4) => {
                out[..4].copy_from_slice(&v4.octets());
                (4, out)
            }
            IpAddr::V6(v6) => (6, v6.octets()),
        }
    }
    let (ip_version, src_addr) = bytes(tuple.src);
    let (_, dst_addr) = bytes(tuple.dst);
    ComboTuple {
        ip_version,
        protocol: tuple.protocol,
        src_port: tuple.src_port,
        dst_port: tuple.dst_port,
        src_addr,
        dst_addr,
    }
}

fn empty_record(kind: ComboRecordKind) -> ComboRecord {
    ComboRecord {
        kind,
        flow_end: ComboFlowEnd::None,
        flow_id: 0,
        tuple: ComboTuple::default(),
        label_id: -1,
        label: std::ptr::null(),
        confidence: 0.0,
        top_count: 0,
        top_ids: [0; COMBO_MAX_TOP_K],
        top_probs: [0.0; COMBO_MAX_TOP_K],
        packets: 0,
        contexts: 0,
        first_ts_nanos: 0,
        last_ts_nanos: 0,
        user_tag: 0,
    }
}

fn fill_prediction(record: &mut ComboRecord, prediction: &Prediction, labels: &[CString]) {
    record.label_id = prediction.label as i32;
    record.label = labels.get(prediction.label as usize).map_or(std::ptr::null(), |l| l.as_ptr());
    record.confidence = prediction.confidence;
    record.top_count = prediction.top().len() as u32;
    for (i, &(class, p)) in prediction.top().iter().enumerate() {
        record.top_ids[i] = class;
        record.top_probs[i] = p;
    }
}

fn convert_record(record: &Record, labels: &[CString]) -> ComboRecord {
    match record {
        Record::Context(ContextRecord {
            flow_id,
            tuple,
            prediction,
            packets,
            index,
            ts_nanos,
            user_tag,
        }) => {
            let mut out = empty_record(ComboRecordKind::Context);
            out.flow_id = *flow_id;
            out.tuple = convert_tuple(tuple);
            fill_prediction(&mut out, prediction, labels);
            out.packets = *packets as u64;
            out.contexts = *index;
            out.first_ts_nanos = *ts_nanos;
            out.last_ts_nanos = *ts_nanos;
            out.user_tag = *user_tag;
            out
        }
        Record::Flow(FlowRecord {
            flow_id,
            tuple,
            prediction,
            contexts,
            packets,
            first_ts_nanos,
            last_ts_nanos,
            end,
            user_tag,
        }) => {
            let mut out = empty_record(ComboRecordKind::Flow);
            out.flow_end = match end {
                FlowEnd::IdleTimeout => ComboFlowEnd::IdleTimeout,
                FlowEnd::Evicted => ComboFlowEnd::Evicted,
                FlowEnd::Flushed => ComboFlowEnd::Flushed,
            };
            out.flow_id = *flow_id;
            out.tuple = convert_tuple(tuple);
            if let Some(prediction) = prediction {
                fill_prediction(&mut out, prediction, labels);
            }
            out.packets = *packets;
            out.contexts = *contexts;
            out.first_ts_nanos = *first_ts_nanos;
            out.last_ts_nanos = *last_ts_nanos;
            out.user_tag = *user_tag;
            out
        }
    }
}
