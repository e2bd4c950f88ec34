//! Which `malloc` serves the process. libtorch allocates every CPU tensor
//! with `malloc`, and glibc's keeps much of what is freed in its heap: at
//! 896 px a `small` training step peaked 1.2 GiB above its live tensors.
//! gperftools' tcmalloc returns freed spans and is faster on the same
//! steps (`docs/benchmarks.md`, "The CPU allocator"), so a palisweep
//! process re-executes itself once, at the start of `main`, with tcmalloc
//! in `LD_PRELOAD` when the library is installed (`scripts/setup.sh`
//! installs it). `PALISWEEP_ALLOCATOR` chooses: `auto` (the default),
//! `tcmalloc` (required: an error when missing) or `system`.
#![allow(unsafe_code)] // the environment is edited before any thread starts

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

/// The variable that chooses the allocator.
pub const CHOICE_VAR: &str = "PALISWEEP_ALLOCATOR";
/// Set for the re-executed process only: the `LD_PRELOAD` to give back to
/// the processes it starts (empty: none), so that a worker chooses its own
/// allocator and other programs keep the user's.
const RESTORE_VAR: &str = "PALISWEEP_ALLOCATOR_RESTORE";
/// gperftools reports every allocation over 1 GiB on stderr by default; a
/// 257,216-token f32 embedding is 2.4 GiB.
const REPORT_VAR: &str = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD";

/// Where distributions install tcmalloc (`libtcmalloc-minimal4` on
/// Debian and Ubuntu, `gperftools-libs` on Fedora and RHEL).
const TCMALLOC_PATHS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib64/libtcmalloc.so.4",
];

/// The `malloc` that serves this process's CPU tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocator {
    /// glibc's own.
    Glibc,
    /// gperftools' tcmalloc.
    Tcmalloc,
}

impl Allocator {
    pub fn name(self) -> &'static str {
        match self {
            Self::Glibc => "glibc",
            Self::Tcmalloc => "tcmalloc",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error(
        "{CHOICE_VAR}=tcmalloc, but no tcmalloc library is installed (looked for {}): \
         install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4; Fedora/RHEL: \
         dnf install gperftools-libs) or set {CHOICE_VAR}=auto",
        TCMALLOC_PATHS.join(", ")
    )]
    Missing,
    #[error("{CHOICE_VAR}={0:?} is not a choice: use auto, tcmalloc or system")]
    Invalid(String),
}

/// What `PALISWEEP_ALLOCATOR` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    Auto,
    Tcmalloc,
    System,
}

fn choice(value: Option<&str>) -> Result<Choice, AllocatorError> {
    match value.map(str::trim) {
        None | Some("" | "auto") => Ok(Choice::Auto),
        Some("tcmalloc") => Ok(Choice::Tcmalloc),
        Some("system" | "glibc") => Ok(Choice::System),
        Some(other) => Err(AllocatorError::Invalid(other.to_owned())),
    }
}

/// The first of `paths` that exists.
fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths
        .iter()
        .map(Path::new)
        .find(|path| path.exists())
        .map(Path::to_path_buf)
}

/// The tcmalloc library installed on this machine, if any.
pub fn installed_tcmalloc() -> Option<PathBuf> {
    first_existing(&TCMALLOC_PATHS)
}

/// The library to preload for `choice`, if any, among `installed`.
fn library(choice: Choice, installed: &[&str]) -> Result<Option<PathBuf>, AllocatorError> {
    match (choice, first_existing(installed)) {
        (Choice::System, _) => Ok(None),
        (Choice::Tcmalloc, None) => Err(AllocatorError::Missing),
        (_, found) => Ok(found),
    }
}

/// `LD_PRELOAD` with `library` in front of what the user preloads.
fn preload_with(library: &Path, user: Option<&OsString>) -> OsString {
    let mut preload = library.as_os_str().to_owned();
    if let Some(user) = user.filter(|u| !u.is_empty()) {
        preload.push(":");
        preload.push(user);
    }
    preload
}

/// Called first in `main`, before any thread starts. In the re-executed
/// process: gives the user's `LD_PRELOAD` back to the environment that
/// child processes inherit. Otherwise: when the choice is tcmalloc and it
/// is installed and not yet loaded, replaces this process with itself
/// with tcmalloc preloaded (same pid, arguments and environment). Returns
/// only when the process goes on as it is.
pub fn reexec_with_chosen_allocator() -> Result<(), AllocatorError> {
    if let Some(user) = std::env::var_os(RESTORE_VAR) {
        // SAFETY: the first statement of `main`; no other thread exists yet.
        unsafe {
            std::env::remove_var(RESTORE_VAR);
            if user.is_empty() {
                std::env::remove_var("LD_PRELOAD");
            } else {
                std::env::set_var("LD_PRELOAD", user);
            }
        }
        return Ok(());
    }
    let choice = choice(std::env::var(CHOICE_VAR).ok().as_deref())?;
    let Some(library) = library(choice, &TCMALLOC_PATHS)? else {
        return Ok(());
    };
    if active() == Allocator::Tcmalloc {
        return Ok(());
    }
    let Ok(exe) = std::env::current_exe() else {
        return Ok(());
    };
    let user = std::env::var_os("LD_PRELOAD");
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let mut command = std::process::Command::new(&exe);
    command
        .arg0(program)
        .args(args)
        .env("LD_PRELOAD", preload_with(&library, user.as_ref()))
        .env(RESTORE_VAR, user.unwrap_or_default());
    if std::env::var_os(REPORT_VAR).is_none() {
        command.env(REPORT_VAR, (1u64 << 60).to_string());
    }
    let error = command.exec();
    // The binary may be gone (rebuilt under a running sweep): go on as is.
    eprintln!(
        "warning: could not restart with {} preloaded ({error}); using glibc's malloc",
        library.display()
    );
    Ok(())
}

/// The allocator this process runs with: tcmalloc when a tcmalloc library
/// is mapped into it, else glibc's.
pub fn active() -> Allocator {
    static ACTIVE: OnceLock<Allocator> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        if maps.contains("libtcmalloc") {
            Allocator::Tcmalloc
        } else {
            Allocator::Glibc
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_is_read_from_the_variable() {
        assert_eq!(choice(None).unwrap(), Choice::Auto);
        assert_eq!(choice(Some(" auto ")).unwrap(), Choice::Auto);
        assert_eq!(choice(Some("tcmalloc")).unwrap(), Choice::Tcmalloc);
        assert_eq!(choice(Some("system")).unwrap(), Choice::System);
        let error = choice(Some("jemalloc")).unwrap_err().to_string();
        assert!(
            error.contains("PALISWEEP_ALLOCATOR=\"jemalloc\""),
            "{error}"
        );
        assert!(error.contains("auto, tcmalloc or system"), "{error}");
    }

    #[test]
    fn auto_preloads_an_installed_tcmalloc_and_goes_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let installed = dir.path().join("libtcmalloc_minimal.so.4");
        std::fs::write(&installed, b"").unwrap();
        let missing = dir.path().join("absent.so");
        let (installed, missing) = (installed.to_str().unwrap(), missing.to_str().unwrap());
        let found = library(Choice::Auto, &[missing, installed]).unwrap();
        assert_eq!(found.as_deref(), Some(Path::new(installed)));
        assert_eq!(library(Choice::Auto, &[missing]).unwrap(), None);
        assert_eq!(library(Choice::System, &[installed]).unwrap(), None);
        let error = library(Choice::Tcmalloc, &[missing]).unwrap_err();
        assert!(
            error.to_string().contains("libtcmalloc-minimal4"),
            "{error}"
        );
    }

    #[test]
    fn the_users_preload_stays_behind_the_allocator() {
        let lib = Path::new("/lib/tc.so");
        assert_eq!(preload_with(lib, None), "/lib/tc.so");
        assert_eq!(preload_with(lib, Some(&OsString::new())), "/lib/tc.so");
        let user = OsString::from("/opt/a.so");
        assert_eq!(preload_with(lib, Some(&user)), "/lib/tc.so:/opt/a.so");
    }
}
