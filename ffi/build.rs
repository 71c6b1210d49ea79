include!("../build-support/libtorch_link.rs");

fn main() {
    link_libtorch();
    // An engine makes this library's caching allocator libtorch's CPU allocator for the whole
    // process; unloading the library would leave libtorch calling into unmapped code.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
