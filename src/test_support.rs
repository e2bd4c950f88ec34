//! Helpers for the crate's unit tests.

/// Tests that touch libtorch's process-wide state (its generator, its
/// determinism switches) rerun themselves alone in a child process, where
/// tests on other threads cannot interfere. `test` is the full path
/// (`model::backward::tests::name`). True in that child, where the test
/// body runs; the parent asserts the child passed.
pub fn alone(test: &str) -> bool {
    if std::env::var_os("PALISWEEP_TEST_ALONE").is_some() {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1"])
        .env("PALISWEEP_TEST_ALONE", "1")
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed when run alone");
    false
}
