//! Link libtorch so that the binary finds it at run time.
//!
//! rustc drops libtorch's CUDA library when nothing references it directly, and the
//! binary gets no library path; both are fixed here. `DEP_TCH_LIBTORCH_LIB` is exported by
//! the `torch-sys` build script, which is why `torch-sys` is a direct dependency.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
