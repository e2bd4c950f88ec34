//! `sweep.budget` through the real binary: synthetic trials on one made-up
//! GPU stop being launched at the trial quota or the device-hours.

use crate::util::{Test, count};

fn spec(budget: &str, step_ms: u32) -> String {
    crate::util::synthetic_spec(
        "s",
        &format!(
            "[synthetic]\nsteps = 20\nstep_ms = {step_ms}\n\
             [sweep.budget]\n{budget}\n\
             [sweep.axes]\n\"train.lr\" = [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6]\n"
        ),
    )
}

fn run(test: &Test) -> crate::util::Output {
    let args = crate::util::run_args("fake-cuda:1x80GiB");
    test.run_in(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `(status, reason)` of every trial in the store.
fn trials(test: &Test) -> Vec<(String, Option<String>)> {
    let db = rusqlite::Connection::open(test.path().join("results/palisweep.sqlite")).unwrap();
    let mut stmt = db
        .prepare("SELECT status, exit_reason FROM trials WHERE sweep = 's' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_trial_quota_launches_that_many_and_ends_the_rest_with_the_reason() {
    let test = Test::new().spec(&spec("trials = 4", 1));
    run(&test)
        .code(0)
        .stdout_has("4 finished, 0 failed, 2 pruned");
    let refused: Vec<Option<String>> = trials(&test)
        .into_iter()
        .filter(|(s, _)| s == "pruned")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(refused.len(), 2);
    for reason in refused {
        assert_eq!(
            reason.as_deref(),
            Some("not started: sweep.budget.trials = 4 trials were launched")
        );
    }
    // The next run counts the trials the first one launched.
    run(&test)
        .code(0)
        .stdout_has("4 finished, 0 failed, 2 pruned");
}

#[test]
fn device_hours_stop_launches_once_the_next_trial_would_not_fit() {
    // Each trial takes about 1 s of 20 × 50 ms steps; the budget is 2.5 s.
    // The first always starts (no rate yet); the rest start while the
    // measured spend plus one more trial's estimate stays within it.
    let test = Test::new().spec(&spec("gpu_hours = 0.000694", 50));
    run(&test).code(0);
    let all = trials(&test);
    let finished = all.iter().filter(|(s, _)| s == "finished").count();
    let refused: Vec<&Option<String>> = all
        .iter()
        .filter(|(s, _)| s == "pruned")
        .map(|(_, r)| r)
        .collect();
    assert!((1..=2).contains(&finished), "{all:?}");
    assert_eq!(finished + refused.len(), 6, "{all:?}");
    for reason in refused {
        let reason = reason.as_deref().unwrap();
        assert!(
            reason.starts_with("not started:")
                && reason.ends_with("would pass sweep.budget.gpu_hours = 0.000694"),
            "{reason}"
        );
    }
    let status = crate::util::status(&test, "s");
    assert_eq!(count(&status, "finished") as usize, finished);
    // plan states the budget against the sweep's measured hours.
    test.run_in(&["plan", "spec.toml", "--devices", "fake-cuda:1x80GiB"])
        .code(0)
        .stdout_has("budget: 0.000694 device-hours of the estimated");
}
