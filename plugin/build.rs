include!("../build-support/libtorch_link.rs");

fn main() {
    let root = link_libtorch();
    // The CPU caching allocator implements a C++ interface of libtorch (c10::Allocator).
    println!("cargo:rerun-if-changed=src/cpu_allocator.cpp");
    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").file("src/cpu_allocator.cpp").warnings(true);
    if let Some(root) = root {
        build.include(root.join("include"));
    }
    // The PyTorch wheels are built with the C++11 ABI of libstdc++.
    build.define("_GLIBCXX_USE_CXX11_ABI", "1");
    build.compile("combo_cpu_allocator");
    println!("cargo:rustc-link-lib=c10");
}
