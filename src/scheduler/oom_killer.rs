//! Telling the kernel's out-of-memory killer from a crash: a worker that
//! dies of SIGKILL that the scheduler did not send, while the kernel's
//! count of OOM kills (`oom_kill` in `/proc/vmstat`, Linux ≥ 4.13; it
//! counts cgroup-limit kills too) went up, ran the host out of memory.

/// The kernel's count of processes its OOM killer has killed, if readable.
pub fn kills_so_far() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    parse(&text)
}

fn parse(vmstat: &str) -> Option<u64> {
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a worker that died by `signal` was the OOM killer's: SIGKILL,
/// not ours, and the count moved since it started.
pub fn killed_it(signal: Option<i32>, killed_by_us: bool, count_at_start: Option<u64>) -> bool {
    signal == Some(nix::sys::signal::Signal::SIGKILL as i32)
        && !killed_by_us
        && matches!((count_at_start, kills_so_far()), (Some(a), Some(b)) if b > a)
}

/// Why, in words, for the attempt's record.
pub const REASON: &str = "killed by the kernel's out-of-memory killer: the host ran out of memory \
     (the scheduler halves the batch and retries; lower resources.max_trials_per_device or \
     train.batch_size if it keeps happening)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_vmstat_and_only_an_unasked_sigkill_counts() {
        assert_eq!(parse("pgfault 10\noom_kill 3\nother 1\n"), Some(3));
        assert_eq!(parse("pgfault 10\n"), None);
        if let Some(now) = kills_so_far() {
            let before = now.checked_sub(1);
            assert!(killed_it(Some(9), false, before));
            assert!(!killed_it(Some(9), true, before), "we killed it");
            assert!(!killed_it(Some(15), false, before), "not SIGKILL");
            assert!(!killed_it(Some(9), false, Some(now)), "no new OOM kill");
        }
    }
}
