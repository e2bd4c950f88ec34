//! Helpers for the crate's unit tests.

/// Tests that touch libtorch's process-wide state (its generator, its
/// determinism switches) rerun themselves alone in a child process, where
/// tests on other threads cannot interfere, on one intra-op thread. `test` is the full path
/// (`model::network::backward::tests::name`). True in that child, where the
/// test body runs; the parent asserts that the child ran exactly that one
/// test and passed (a renamed test would otherwise run nothing and pass).
pub fn alone(test: &str) -> bool {
    if std::env::var_os("PALISWEEP_TEST_ALONE").is_some() {
        // One intra-op thread: MKL's dynamic threading otherwise picks a
        // thread count per call from the machine's load, which moves the
        // last bits of a sum between two passes that must agree.
        tch::set_num_threads(1);
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1"])
        .env("PALISWEEP_TEST_ALONE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{test} failed when run alone:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        ran_and_passed(&stdout),
        Some(1),
        "the child run of `{test}` did not run exactly one test: is the name right?\n{stdout}"
    );
    false
}

/// The number of tests libtest's summary line says passed
/// (`test result: ok. 1 passed; 0 failed; …`).
fn ran_and_passed(stdout: &str) -> Option<u32> {
    let line = stdout.lines().find(|l| l.starts_with("test result:"))?;
    let passed = line.split(';').next()?.split_whitespace().rev().nth(1)?;
    passed.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_ran_nothing_is_told_apart_from_one_that_ran_the_test() {
        let ran = "\nrunning 1 test\ntest a::b ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 500 filtered out; finished in 0.20s\n";
        let none = "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 501 filtered out; finished in 0.00s\n";
        assert_eq!(ran_and_passed(ran), Some(1));
        assert_eq!(ran_and_passed(none), Some(0));
        assert_eq!(ran_and_passed("no summary"), None);
    }

    #[test]
    fn a_misnamed_test_fails_the_parent() {
        // The parent of a name that matches no test must panic; in the
        // child, `alone` only returns true.
        if std::env::var_os("PALISWEEP_TEST_ALONE").is_some() {
            return;
        }
        let result = std::panic::catch_unwind(|| alone("test_support::tests::no_such_test"));
        assert!(result.is_err(), "a child that ran no test passed");
    }
}
