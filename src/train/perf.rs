//! Process measurements reported with every step.

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    crate::devices::usage::peak_rss(std::process::id())
}
