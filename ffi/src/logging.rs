//! Log records of the library, handed to a callback of the host's.

use std::ffi::{CString, c_char, c_void};
use std::sync::RwLock;

/// Importance of a log record, as in Rust's `log` crate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComboLogLevel {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// Receives one log record. `target` (the module) and `message` are NUL-terminated and valid
/// only during the call. Called from any of the library's threads, possibly at the same time.
pub type ComboLogCallback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: ComboLogLevel,
        target: *const c_char,
        message: *const c_char,
    ),
>;

struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, ComboLogLevel, *const c_char, *const c_char),
    /// The host's pointer, passed back untouched.
    user_data: usize,
}

struct CallbackLogger {
    sink: RwLock<Option<Sink>>,
}

static LOGGER: CallbackLogger = CallbackLogger { sink: RwLock::new(None) };

impl log::Log for CallbackLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(sink) = self.sink.read() else { return };
        let Some(sink) = sink.as_ref() else { return };
        let level = match record.level() {
            log::Level::Error => ComboLogLevel::Error,
            log::Level::Warn => ComboLogLevel::Warn,
            log::Level::Info => ComboLogLevel::Info,
            log::Level::Debug => ComboLogLevel::Debug,
            log::Level::Trace => ComboLogLevel::Trace,
        };
        let target = CString::new(record.target().replace('\0', " ")).unwrap_or_default();
        let message =
            CString::new(record.args().to_string().replace('\0', " ")).unwrap_or_default();
        // SAFETY: the host registered this callback for exactly these arguments; the strings
        // live until the call returns, as documented.
        unsafe {
            (sink.callback)(sink.user_data as *mut c_void, level, target.as_ptr(), message.as_ptr())
        };
    }

    fn flush(&self) {}
}

/// Installs (or with NULL removes) the callback; records less important than `max_level` are
/// not formatted at all.
pub fn set_callback(callback: ComboLogCallback, user_data: *mut c_void, max_level: ComboLogLevel) {
    // Fails only when this copy of the library already installed its logger: fine.
    let _ = log::set_logger(&LOGGER);
    let filter = match (callback.is_some(), max_level) {
        (false, _) | (_, ComboLogLevel::Off) => log::LevelFilter::Off,
        (true, ComboLogLevel::Error) => log::LevelFilter::Error,
        (true, ComboLogLevel::Warn) => log::LevelFilter::Warn,
        (true, ComboLogLevel::Info) => log::LevelFilter::Info,
        (true, ComboLogLevel::Debug) => log::LevelFilter::Debug,
        (true, ComboLogLevel::Trace) => log::LevelFilter::Trace,
    };
    if let Ok(mut sink) = LOGGER.sink.write() {
        *sink = callback.map(|callback| Sink { callback, user_data: user_data as usize });
    }
    log::set_max_level(filter);
}
