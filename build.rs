//! Embeds an rpath to libtorch's `lib/` so the binary and the tests run
//! without `LD_LIBRARY_PATH`. libtorch is the PyPI torch wheel that
//! `scripts/setup.sh` installs (see `.cargo/config.toml`).

use std::path::PathBuf;

fn main() {
    git_sha();
    println!("cargo::rustc-check-cfg=cfg(palisweep_determinism)");
    println!("cargo::rustc-check-cfg=cfg(palisweep_kernels)");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!(
            "cargo:warning=LIBTORCH is not set: the binary will need torch/lib on LD_LIBRARY_PATH"
        );
        return;
    };
    // The libtorch version, for the environment a sweep records.
    let version_py = libtorch.join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    if let Ok(text) = std::fs::read_to_string(&version_py)
        && let Some(line) = text.lines().find(|l| l.starts_with("__version__"))
        && let Some(version) = line.split('\'').nth(1)
    {
        println!("cargo:rustc-env=PALISWEEP_LIBTORCH_VERSION={version}");
    }
    cpp_shims(&libtorch);
    // Resolve the .venv/libtorch link so the rpath names the real folder.
    let lib = libtorch.canonicalize().unwrap_or(libtorch).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Nothing of ours calls into libtorch_cuda directly, so the linker's
    // --as-needed would drop it and libtorch would never see a GPU: keep it.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    // The wheel's CUDA libraries sit in site-packages/nvidia/*/lib; torch's
    // own libraries find them through their $ORIGIN rpaths, so nothing more is needed.
}

/// What tch cannot express, in a few hundred lines of C++ compiled against
/// the same headers tch's own shim uses: torch's deterministic-algorithm
/// switches, which `rerun` needs on CUDA (`csrc/determinism.cpp`), and the
/// custom autograd functions of memory-efficient attention and the NF4
/// linear layer (`csrc/kernels.cpp`).
fn cpp_shims(libtorch: &std::path::Path) {
    let include = libtorch.join("include");
    for (file, lib, cfg) in [
        (
            "csrc/determinism.cpp",
            "palisweep_determinism",
            "palisweep_determinism",
        ),
        ("csrc/kernels.cpp", "palisweep_kernels", "palisweep_kernels"),
    ] {
        println!("cargo:rerun-if-changed={file}");
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file(file)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .warnings(false)
            .compile(lib);
        println!("cargo:rustc-cfg={cfg}");
    }
}

/// The commit the binary was built from, when built from a git checkout.
fn git_sha() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(output) = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        && output.status.success()
    {
        let sha = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        println!("cargo:rustc-env=PALISWEEP_GIT_SHA={sha}");
    }
}
