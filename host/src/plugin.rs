//! The plugin seen through its C ABI: `libcombo_packet.so` loaded with libloading, as a
//! packet engine loads it. Safe wrappers own the handles and free them on drop.

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use combo_packet::{
    COMBO_ABI_VERSION_MAJOR, ComboEngine, ComboLogCallback, ComboLogLevel, ComboOutcome,
    ComboRecord, ComboStats, ComboStatus, ComboWorker,
};
use libloading::Library;

type AbiVersion = unsafe extern "C" fn() -> u32;
type SetLogCallback =
    unsafe extern "C" fn(ComboLogCallback, *mut c_void, ComboLogLevel) -> ComboStatus;
type LastError = unsafe extern "C" fn(*mut c_char, usize) -> usize;
type EngineNewFromToml = unsafe extern "C" fn(*const c_char, *mut *mut ComboEngine) -> ComboStatus;
type EngineFree = unsafe extern "C" fn(*mut ComboEngine);
type EngineLabelCount = unsafe extern "C" fn(*const ComboEngine) -> u32;
type EngineLabelName = unsafe extern "C" fn(*const ComboEngine, u32) -> *const c_char;
type EngineStats = unsafe extern "C" fn(*const ComboEngine, *mut ComboStats) -> ComboStatus;
type WorkerNew = unsafe extern "C" fn(*const ComboEngine, *mut *mut ComboWorker) -> ComboStatus;
type WorkerFree = unsafe extern "C" fn(*mut ComboWorker);
type WorkerProcess = unsafe extern "C" fn(
    *mut ComboWorker,
    u32,
    u64,
    *const u8,
    u32,
    u32,
    u64,
    *mut ComboOutcome,
) -> ComboStatus;
type WorkerPoll =
    unsafe extern "C" fn(*mut ComboWorker, *mut ComboRecord, usize, *mut usize) -> ComboStatus;
type WorkerFlush = unsafe extern "C" fn(*mut ComboWorker, u32) -> ComboStatus;
type WorkerAdvanceClock = unsafe extern "C" fn(*mut ComboWorker, u64) -> ComboStatus;
type WorkerStats = unsafe extern "C" fn(*const ComboWorker, *mut ComboStats) -> ComboStatus;

/// The loaded library and the entry points the host uses.
pub struct Plugin {
    last_error: LastError,
    engine_new_from_toml: EngineNewFromToml,
    engine_free: EngineFree,
    engine_label_count: EngineLabelCount,
    engine_label_name: EngineLabelName,
    engine_stats: EngineStats,
    worker_new: WorkerNew,
    worker_free: WorkerFree,
    worker_process: WorkerProcess,
    worker_poll: WorkerPoll,
    worker_flush: WorkerFlush,
    worker_advance_clock: WorkerAdvanceClock,
    worker_stats: WorkerStats,
    // Last field: the function pointers above must not outlive the library.
    _library: Library,
}

/// Where the plugin is looked for when `--plugin` is not given: beside the `combo` binary
/// (cargo builds both into the same folder).
pub fn default_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("libcombo_packet.so")
}

impl Plugin {
    pub fn load(path: &Path) -> Result<Arc<Self>> {
        // SAFETY: loading runs the library's initialisers; libcombo_packet.so is our own
        // library, whose initialisers are those of Rust, libtorch and their dependencies.
        let library = unsafe { Library::new(path) }
            .with_context(|| format!("cannot load plugin {}", path.display()))?;

        // SAFETY: each symbol is looked up with the signature ffi/src/lib.rs gives it; the
        // ABI version is checked before any other entry point is used.
        unsafe {
            let version: AbiVersion = *library.get(b"combo_abi_version\0")?;
            let found = version();
            if found >> 16 != COMBO_ABI_VERSION_MAJOR {
                bail!(
                    "{}: plugin ABI {}.{} but this host speaks {}.x",
                    path.display(),
                    found >> 16,
                    found & 0xffff,
                    COMBO_ABI_VERSION_MAJOR
                );
            }
            // The plugin's log records join ours, at our level.
            let set_log_callback: SetLogCallback = *library.get(b"combo_set_log_callback\0")?;
            set_log_callback(Some(forward_log), std::ptr::null_mut(), log_level());
            Ok(Arc::new(Self {
                last_error: *library.get(b"combo_last_error\0")?,
                engine_new_from_toml: *library.get(b"combo_engine_new_from_toml\0")?,
                engine_free: *library.get(b"combo_engine_free\0")?,
                engine_label_count: *library.get(b"combo_engine_label_count\0")?,
                engine_label_name: *library.get(b"combo_engine_label_name\0")?,
                engine_stats: *library.get(b"combo_engine_stats\0")?,
                worker_new: *library.get(b"combo_worker_new\0")?,
                worker_free: *library.get(b"combo_worker_free\0")?,
                worker_process: *library.get(b"combo_worker_process\0")?,
                worker_poll: *library.get(b"combo_worker_poll\0")?,
                worker_flush: *library.get(b"combo_worker_flush\0")?,
                worker_advance_clock: *library.get(b"combo_worker_advance_clock\0")?,
                worker_stats: *library.get(b"combo_worker_stats\0")?,
                _library: library,
            }))
        }
    }

    fn check(&self, status: ComboStatus, what: &str) -> Result<()> {
        if status == ComboStatus::Ok {
            return Ok(());
        }
        let mut buffer = vec![0u8; 1024];
        // SAFETY: the buffer has the length we pass.
        unsafe { (self.last_error)(buffer.as_mut_ptr().cast(), buffer.len()) };
        let message = CStr::from_bytes_until_nul(&buffer)
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default();
        bail!("{what}: {message}")
    }
}

fn log_level() -> ComboLogLevel {
    match log::max_level() {
        log::LevelFilter::Off => ComboLogLevel::Off,
        log::LevelFilter::Error => ComboLogLevel::Error,
        log::LevelFilter::Warn => ComboLogLevel::Warn,
        log::LevelFilter::Info => ComboLogLevel::Info,
        log::LevelFilter::Debug => ComboLogLevel::Debug,
        log::LevelFilter::Trace => ComboLogLevel::Trace,
    }
}

/// Receives the plugin's log records (from any of its threads).
unsafe extern "C" fn forward_log(
    _user_data: *mut c_void,
    level: ComboLogLevel,
    target: *const c_char,
    message: *const c_char,
) {
    let level = match level {
        ComboLogLevel::Error => log::Level::Error,
        ComboLogLevel::Warn => log::Level::Warn,
        ComboLogLevel::Info => log::Level::Info,
        ComboLogLevel::Debug => log::Level::Debug,
        ComboLogLevel::Trace | ComboLogLevel::Off => log::Level::Trace,
    };
    let text = |pointer: *const c_char| {
        if pointer.is_null() {
            return String::new();
        }
        // SAFETY: the plugin passes NUL-terminated strings valid for this call.
        unsafe { CStr::from_ptr(pointer) }.to_string_lossy().into_owned()
    };
    log::log!(target: "plugin", level, "{}: {}", text(target), text(message));
}

/// An engine created through the plugin.
pub struct PluginEngine {
    plugin: Arc<Plugin>,
    handle: *mut ComboEngine,
}

// SAFETY: the C ABI documents engines as shareable between threads.
unsafe impl Send for PluginEngine {}
// SAFETY: as above; every engine entry point is thread-safe.
unsafe impl Sync for PluginEngine {}

impl PluginEngine {
    pub fn new(plugin: &Arc<Plugin>, config_toml: &str) -> Result<Self> {
        let text = CString::new(config_toml).context("configuration contains a NUL byte")?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid C string and out pointer.
        let status = unsafe { (plugin.engine_new_from_toml)(text.as_ptr(), &mut handle) };
        plugin.check(status, "cannot create the engine")?;
        Ok(Self { plugin: Arc::clone(plugin), handle })
    }

    pub fn labels(&self) -> Vec<String> {
        // SAFETY: live handle.
        let count = unsafe { (self.plugin.engine_label_count)(self.handle) };
        (0..count)
            .map(|id| {
                // SAFETY: live handle, id in range; the name lives as long as the engine.
                let name = unsafe { (self.plugin.engine_label_name)(self.handle, id) };
                if name.is_null() {
                    return String::new();
                }
                // SAFETY: non-null NUL-terminated string owned by the engine.
                unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
            })
            .collect()
    }

    pub fn stats(&self) -> Result<ComboStats> {
        let mut stats = ComboStats::default();
        // SAFETY: live handle, writable out.
        let status = unsafe { (self.plugin.engine_stats)(self.handle, &mut stats) };
        self.plugin.check(status, "engine statistics")?;
        Ok(stats)
    }

    pub fn worker(self: &Arc<Self>) -> Result<PluginWorker> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: live engine handle, writable out.
        let status = unsafe { (self.plugin.worker_new)(self.handle, &mut handle) };
        self.plugin.check(status, "cannot create a worker")?;
        Ok(PluginWorker { engine: Arc::clone(self), handle, records: Vec::new() })
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        // SAFETY: created by engine_new, freed once; workers hold an Arc to us, so none is left.
        unsafe { (self.plugin.engine_free)(self.handle) };
    }
}

/// A worker handle, used by one thread at a time.
pub struct PluginWorker {
    engine: Arc<PluginEngine>,
    handle: *mut ComboWorker,
    records: Vec<ComboRecord>,
}

// SAFETY: a worker may move between threads; the host uses each from one thread at a time.
unsafe impl Send for PluginWorker {}

/// Records fetched per poll call.
const POLL_BATCH: usize = 256;

impl PluginWorker {
    pub fn process(
        &mut self,
        link_type: u32,
        ts_nanos: u64,
        data: &[u8],
        orig_len: u32,
        user_tag: u64,
    ) -> Result<ComboOutcome> {
        let plugin = &self.engine.plugin;
        let mut outcome = ComboOutcome::Accepted;
        let caplen = u32::try_from(data.len()).context("frame larger than 4 GiB")?;
        // SAFETY: live worker used only by this thread; data is caplen readable bytes.
        let status = unsafe {
            (plugin.worker_process)(
                self.handle,
                link_type,
                ts_nanos,
                data.as_ptr(),
                caplen,
                orig_len,
                user_tag,
                &mut outcome,
            )
        };
        plugin.check(status, "process")?;
        Ok(outcome)
    }

    /// Every finished record, appended to `out`.
    pub fn poll(&mut self, out: &mut Vec<ComboRecord>) -> Result<()> {
        let plugin = &self.engine.plugin;
        loop {
            self.records.clear();
            self.records.reserve(POLL_BATCH);
            let mut count = 0usize;
            // SAFETY: the vector has room for POLL_BATCH records; the plugin writes `count`
            // <= POLL_BATCH of them, which set_len then exposes.
            unsafe {
                let status = (plugin.worker_poll)(
                    self.handle,
                    self.records.as_mut_ptr(),
                    POLL_BATCH,
                    &mut count,
                );
                plugin.check(status, "poll")?;
                self.records.set_len(count.min(POLL_BATCH));
            }
            out.extend_from_slice(&self.records);
            if count < POLL_BATCH {
                return Ok(());
            }
        }
    }

    pub fn flush(&mut self, end_flows: bool) -> Result<()> {
        let plugin = &self.engine.plugin;
        let flags = if end_flows { combo_packet::COMBO_FLUSH_END_FLOWS } else { 0 };
        // SAFETY: live worker used only by this thread.
        let status = unsafe { (plugin.worker_flush)(self.handle, flags) };
        plugin.check(status, "flush")
    }

    /// Ends the flows idle at capture time `now_nanos` without waiting for the model.
    pub fn advance_clock(&mut self, now_nanos: u64) -> Result<()> {
        let plugin = &self.engine.plugin;
        // SAFETY: live worker used only by this thread.
        let status = unsafe { (plugin.worker_advance_clock)(self.handle, now_nanos) };
        plugin.check(status, "advance clock")
    }

    pub fn stats(&self) -> Result<ComboStats> {
        let plugin = &self.engine.plugin;
        let mut stats = ComboStats::default();
        // SAFETY: live worker, writable out.
        let status = unsafe { (plugin.worker_stats)(self.handle, &mut stats) };
        plugin.check(status, "worker statistics")?;
        Ok(stats)
    }
}

impl Drop for PluginWorker {
    fn drop(&mut self) {
        // SAFETY: created by worker_new, freed once, before its engine (we hold an Arc).
        unsafe { (self.engine.plugin.worker_free)(self.handle) };
    }
}
