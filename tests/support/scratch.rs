//! A scratch folder for one test's files, shared by the test crates of the workspace (each
//! includes this file with `#[path]`).

use std::path::{Path, PathBuf};

/// A fresh, empty folder under the system's temporary folder, removed when the test passes
/// and kept, for a look, when it fails.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `<temp>/<name>-<pid>`, emptied first.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
