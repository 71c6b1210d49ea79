// Shared by the build scripts of every crate that links libtorch (each crate's build.rs
// `include!`s this file and calls `link_libtorch`).
//
// Two linker details matter for users:
// - rpath: binaries must find libtorch without LD_LIBRARY_PATH, so the absolute library folder
//   is recorded in the ELF run path.
// - libtorch_cuda: nothing in our code references a symbol of it, so `--as-needed` would drop it
//   and CUDA would silently be unavailable at run time. It is linked with `--no-as-needed`.

use std::path::PathBuf;

/// Adds the link arguments; returns libtorch's root folder, if known.
fn link_libtorch() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run scripts/setup.sh first");
        return None;
    };
    // `.libtorch` is a symbolic link into the cache; record where it really points so the
    // binaries keep working if the clone moves.
    let root = std::fs::canonicalize(PathBuf::from(&root)).unwrap_or_else(|_| root.into());
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    Some(root)
}
