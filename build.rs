//! Embeds an rpath to libtorch's `lib/` so the binary and the tests run
//! without `LD_LIBRARY_PATH`. libtorch is the PyPI torch wheel that
//! `scripts/setup.sh` installs (see `.cargo/config.toml`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!(
            "cargo:warning=LIBTORCH is not set: the binary will need torch/lib on LD_LIBRARY_PATH"
        );
        return;
    };
    // Resolve the .venv/libtorch link so the rpath names the real folder.
    let lib = libtorch.canonicalize().unwrap_or(libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The wheel's CUDA libraries sit in site-packages/nvidia/*/lib; torch's
    // own libraries find them through their $ORIGIN rpaths, so nothing more is needed.
}
