//! `sweep.strategy = "tpe"` through the real binary, on synthetic trials
//! (one made-up GPU, so results arrive in a fixed order): suggestions are
//! deterministic and survive a kill -9, and TPE beats random search at the
//! same budget.

use crate::util::Test;

/// The synthetic validation loss falls with the learning rate over the
/// whole of [1e-7, 1e-4] (`2·exp(-3·sqrt(lr/1e-4))`, from 1.03 to 0.10):
/// the best configurations sit at the upper edge.
fn spec(strategy: &str, seed: u64, samples: u32, step_ms: u32) -> String {
    crate::util::synthetic_spec(
        "s",
        &format!(
            "[synthetic]\nsteps = 10\nstep_ms = {step_ms}\n\
             [sweep]\nstrategy = \"{strategy}\"\nsamples = {samples}\n\
             [sweep.axes]\n\"train.lr\" = {{ loguniform = [1e-7, 1e-4] }}\n\
             \"train.weight_decay\" = {{ uniform = [0.0, 0.5] }}\n"
        ),
    )
    .replacen(
        "name = \"s\"\n",
        &format!("name = \"s\"\nseed = {seed}\n"),
        1,
    )
}

fn run_args() -> Vec<String> {
    let mut args = crate::util::run_args("fake-cuda:1x80GiB");
    args.extend(["--kill-grace".to_owned(), "1".to_owned()]);
    args
}

fn run(test: &Test) -> crate::util::Output {
    let args = run_args();
    test.run_in(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The trial ids of `suggestions.jsonl`, in order.
fn suggested(test: &Test) -> Vec<String> {
    crate::util::jsonl(&test.path().join("results/s/suggestions.jsonl"))
        .iter()
        .filter_map(|l| l["trial"].as_str().map(str::to_owned))
        .collect()
}

/// The best selection metric of the sweep.
fn best(test: &Test) -> f64 {
    let db = rusqlite::Connection::open(test.path().join("results/palisweep.sqlite")).unwrap();
    db.query_row(
        "SELECT MIN(best_metric) FROM trials WHERE sweep = 's' AND status = 'finished'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_tpe_sweep_killed_mid_way_suggests_what_an_uninterrupted_one_did() {
    let whole = Test::new().spec(&spec("tpe", 7, 9, 30));
    run(&whole).code(0).stdout_has("9 finished, 0 failed");
    let expected = suggested(&whole);
    assert_eq!(expected.len(), 9);
    let mut unique = expected.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 9, "nine different trials");
    assert_eq!(crate::util::trial_dirs(&whole, "s").len(), 9);

    let killed = Test::new().spec(&spec("tpe", 7, 9, 30));
    // Past the five random starts: the model has made suggestions.
    crate::util::kill_9_run_when(&killed, || suggested(&killed).len() >= 7);
    run(&killed).code(0).stdout_has("9 finished, 0 failed");
    assert_eq!(
        suggested(&killed),
        expected,
        "the same suggestions, in order"
    );
    // A finished TPE sweep suggests nothing more.
    run(&killed).code(0).stdout_has("9 finished, 0 failed");
    assert_eq!(suggested(&killed).len(), 9);
}

#[test]
fn tpe_finds_a_better_configuration_than_random_search_at_the_same_budget() {
    // Ten trials each (TPE: five random starts, five from the model), over
    // twelve seeds; the sweeps' best validation losses are compared seed by
    // seed.
    let seeds: Vec<u64> = (0..12).collect();
    let mut wins = 0;
    let (mut tpe_best, mut random_best) = (Vec::new(), Vec::new());
    for &seed in &seeds {
        let mut bests = Vec::new();
        for strategy in ["tpe", "random"] {
            let test = Test::new().spec(&spec(strategy, seed, 10, 1));
            run(&test).code(0).stdout_has("10 finished, 0 failed");
            bests.push(best(&test));
        }
        if bests[0] < bests[1] {
            wins += 1;
        }
        tpe_best.push(bests[0]);
        random_best.push(bests[1]);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        f64::midpoint(v[v.len() / 2 - 1], v[v.len() / 2])
    };
    let (tpe_median, random_median) = (median(&mut tpe_best), median(&mut random_best));
    // A one-sided sign test: under "no difference" each seed is a fair
    // coin; P(wins >= 10 of 12) = 79/4096 ≈ 0.019.
    let n = seeds.len() as u64;
    let tail: u64 = (wins..=n).map(|k| binomial(n, k)).sum();
    let p = tail as f64 / 2f64.powi(n as i32);
    eprintln!(
        "TPE beat random on {wins} of {n} seeds (sign test p = {p:.4}); median best val/loss {tpe_median:.4} vs {random_median:.4}"
    );
    assert!(p < 0.05, "TPE won {wins} of {n} seeds (p = {p:.4})");
    assert!(tpe_median < random_median);
}

fn binomial(n: u64, k: u64) -> u64 {
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

/// Two step times whose loss is the same (`synthetic.step_ms` changes only
/// the cost, tenfold), crossed with the learning rate.
fn cost_spec(seed: u64, cost_aware: bool) -> String {
    spec("tpe", seed, 12, 1)
        .replace(
            "samples = 12\n",
            &format!("samples = 12\ncost_aware = {cost_aware}\n"),
        )
        .replace(
            "\"train.weight_decay\" = { uniform = [0.0, 0.5] }\n",
            "\"synthetic.step_ms\" = [1, 10]\n",
        )
}

#[test]
fn cost_aware_tpe_suggests_the_dearer_of_two_equal_configurations_less_often() {
    // After TPE's 5 random trials, how many suggestions took the dear
    // step time, over three seeds.
    let dear = |cost_aware: bool| -> usize {
        (1..=3)
            .map(|seed| {
                let test = Test::new().spec(&cost_spec(seed, cost_aware));
                run(&test).code(0).stdout_has("12 finished, 0 failed");
                crate::util::jsonl(&test.path().join("results/s/suggestions.jsonl"))
                    .iter()
                    .skip(5)
                    .filter(|l| l["params"]["synthetic.step_ms"] == 10)
                    .count()
            })
            .sum()
    };
    let (plain, aware) = (dear(false), dear(true));
    eprintln!(
        "dear suggestions after the random start, of 21: plain TPE {plain}, cost-aware {aware}"
    );
    assert!(
        aware < plain && aware <= 3,
        "cost-aware TPE chose the tenfold dearer step time {aware} times of 21, plain TPE {plain}"
    );
}
