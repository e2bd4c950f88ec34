//! The report end to end: a hand-made event stream through the store's
//! sink, the report written to a temp dir and read back.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::events::event::{
    AttemptOutcome, Counts, Environment, SweepEvent, SweepInfo, SweepStatus, TrialInfo, TrialStatus,
};
use crate::track::store::StoreSink;
use crate::worker::protocol::{Envelope, PROTOCOL_VERSION, WorkerEvent};

const T0: f64 = 1_700_000_000.0;
const SIZES: [(&str, u32); 2] = [("3b", 224), ("10b", 448)];
const LRS: [f64; 2] = [1e-4, 3e-4];
const DECAYS: [f64; 2] = [0.0, 0.1];
const SEEDS: [i64; 2] = [0, 1];

/// One grid point of the hand-made sweep.
#[derive(Clone, Debug)]
struct Point {
    id: String,
    size: &'static str,
    resolution: u32,
    lr: f64,
    wd: f64,
    seed: i64,
}

/// The F1 the point's evaluations rise to (its best), made so that the
/// best lr and weight decay differ between the two checkpoints.
fn final_f1(p: &Point) -> f64 {
    let base = if p.size == "3b" { 0.6 } else { 0.7 };
    let lr = if (p.lr > 2e-4) == (p.size == "3b") {
        0.1
    } else {
        0.0
    };
    let wd = if (p.wd > 0.0) == (p.size == "10b") {
        0.05
    } else {
        0.0
    };
    base + lr + wd + 0.01 * p.seed as f64
}

fn points() -> Vec<Point> {
    let mut out = Vec::new();
    for (size, resolution) in SIZES {
        for lr in LRS {
            for wd in DECAYS {
                for seed in SEEDS {
                    out.push(Point {
                        id: format!("t{:02}{size}x{resolution}", out.len()),
                        size,
                        resolution,
                        lr,
                        wd,
                        seed,
                    });
                }
            }
        }
    }
    out
}

fn worker(id: &str, time: f64, event: WorkerEvent) -> SweepEvent {
    SweepEvent::Worker {
        trial: id.into(),
        attempt: 1,
        line: Envelope {
            written_by: None,
            v: PROTOCOL_VERSION,
            time,
            event,
        },
    }
}

/// Every point finishes but `failed`, which fails at its first step.
#[allow(clippy::too_many_lines)]
fn stream(points: &[Point], failed: &Point) -> Vec<SweepEvent> {
    let mut events = vec![SweepEvent::SweepStarted {
        sweep: Box::new(SweepInfo {
            name: "grid".into(),
            spec_path: "experiments/grid.toml".into(),
            spec_text: "[experiment]\nname = \"grid\"\n".into(),
            spec_hash: "ab".repeat(32),
            results: "/tmp/results".into(),
            total_trials: points.len() + 1,
            devices: vec!["cuda:0".into()],
            axes: vec![
                "model.size".into(),
                "model.resolution".into(),
                "train.lr".into(),
                "train.weight_decay".into(),
                "experiment.seed".into(),
            ],
            select_metric: "val/field_f1".into(),
        }),
        environment: Box::new(Environment {
            palisweep_version: "0.1.0".into(),
            git_sha: None,
            libtorch_version: Some("2.9.0".into()),
            cuda_version: Some("12.8".into()),
            gpu_names: vec!["NVIDIA H100 <80GB>".into()],
            driver_version: None,
            host: "node1".into(),
            dataset_fingerprint: None,
            checkpoint_fingerprints: BTreeMap::new(),
        }),
        resumed: false,
        time: T0,
    }];
    let all: Vec<&Point> = points.iter().chain([failed]).collect();
    for p in &all {
        events.push(SweepEvent::TrialRecorded {
            trial: Box::new(TrialInfo {
                id: p.id.clone(),
                params: BTreeMap::from([
                    ("model.size".into(), json!(p.size)),
                    ("model.resolution".into(), json!(p.resolution)),
                    ("train.lr".into(), json!(p.lr)),
                    ("train.weight_decay".into(), json!(p.wd)),
                    ("experiment.seed".into(), json!(p.seed)),
                ]),
                config: format!(
                    "[experiment]\nname = \"grid\"\nseed = {}\n\n[model]\nsize = \"{}\"\nresolution = {}\n\n[train]\nmethod = \"lora\"\nlr = {:?}\nweight_decay = {:?}\n",
                    p.seed, p.size, p.resolution, p.lr, p.wd
                ),
                dir: format!("/tmp/results/grid/trials/{}", p.id),
                est_memory_bytes: if p.size == "3b" { 20 << 30 } else { 40 << 30 },
                batch_size: 8,
                grad_accum: 1,
                rel_cost: 1.0,
            }),
            status: TrialStatus::Queued,
        });
    }
    for (i, p) in all.iter().enumerate() {
        let start = T0 + 100.0 * i as f64;
        let id = p.id.as_str();
        events.push(SweepEvent::AttemptStarted {
            trial: id.into(),
            attempt: 1,
            device: "cuda:0".into(),
            batch_size: 8,
            grad_accum: 1,
            pid: None,
            job: None,
            rerun: false,
            time: start,
        });
        if p.id == failed.id {
            events.extend([
                worker(
                    id,
                    start + 1.0,
                    WorkerEvent::Failed {
                        kind: crate::worker::protocol::FailureKind::Oom,
                        message: "CUDA out of memory".into(),
                    },
                ),
                SweepEvent::AttemptEnded {
                    trial: id.into(),
                    attempt: 1,
                    outcome: AttemptOutcome::OutOfMemory,
                    exit_code: Some(3),
                    reason: Some("CUDA out of memory".into()),
                    peak_memory_bytes: None,
                    time: start + 2.0,
                },
                SweepEvent::TrialEnded {
                    trial: id.into(),
                    status: TrialStatus::Failed,
                    reason: Some("out of memory at batch 1".into()),
                    best_metric: None,
                    time: start + 2.0,
                },
            ]);
            continue;
        }
        let f1 = final_f1(p);
        for step in 1..=4u64 {
            let t = start + 10.0 * step as f64;
            events.push(worker(
                id,
                t,
                WorkerEvent::Step {
                    step,
                    epoch: step / 2,
                    metrics: BTreeMap::from([("train/loss".into(), 2.0 / step as f64)]),
                    truncated: 0,
                },
            ));
            if step % 2 == 0 {
                // 0.9 × the best, then the best.
                let value = if step == 2 { f1 * 0.9 } else { f1 };
                events.push(worker(
                    id,
                    t,
                    WorkerEvent::Eval {
                        step,
                        epoch: step / 2,
                        split: "val".into(),
                        metrics: BTreeMap::from([
                            ("val/field_f1".into(), value),
                            ("val/loss".into(), 1.0 - value),
                            // Never valid: a metric with no signal.
                            ("val/json_valid".into(), 0.0),
                        ]),
                        truncated: 0,
                    },
                ));
            }
        }
        // The best checkpoint (step 4) scored on test, as the trainer does.
        events.push(worker(
            id,
            start + 45.0,
            WorkerEvent::Eval {
                step: 4,
                epoch: 2,
                split: "test".into(),
                metrics: BTreeMap::from([("test/field_f1".into(), f1 - 0.05)]),
                truncated: 0,
            },
        ));
        let size_gib: u64 = if p.size == "3b" { 12 } else { 30 };
        events.extend([
            SweepEvent::AttemptEnded {
                trial: id.into(),
                attempt: 1,
                outcome: AttemptOutcome::Finished,
                exit_code: Some(0),
                reason: None,
                peak_memory_bytes: Some(size_gib << 30),
                time: start + if p.size == "3b" { 50.0 } else { 90.0 },
            },
            SweepEvent::TrialEnded {
                trial: id.into(),
                status: TrialStatus::Finished,
                reason: None,
                best_metric: Some(f1),
                time: start + 90.0,
            },
        ]);
    }
    events.push(SweepEvent::SweepEnded {
        status: SweepStatus::Failed,
        counts: Counts {
            finished: points.len(),
            failed: 1,
            pruned: 0,
            interrupted: 0,
        },
        time: T0 + 10_000.0,
    });
    events
}

fn store_with_sweep(dir: &Path) -> (Store, Vec<Point>) {
    let points = points();
    let failed = Point {
        id: "zz_failed".into(),
        size: "10b",
        resolution: 448,
        lr: 1e-3,
        wd: 0.0,
        seed: 0,
    };
    let path = dir.join("palisweep.sqlite");
    let mut sink = StoreSink::new(Store::open(&path).unwrap());
    sink.write(&stream(&points, &failed)).unwrap();
    drop(sink);
    (Store::open_read_only(&path).unwrap(), points)
}

/// The best (lr, weight decay) of each checkpoint by the mean over seeds
/// of each trial's best F1, computed from the points alone.
fn expected_best(points: &[Point]) -> BTreeMap<String, (f64, f64, f64)> {
    let mut sums: BTreeMap<(String, String), (f64, usize, f64, f64)> = BTreeMap::new();
    for p in points {
        let checkpoint = format!("{}-{}", p.size, p.resolution);
        let e = sums
            .entry((checkpoint, format!("{}/{}", p.lr, p.wd)))
            .or_insert((0.0, 0, p.lr, p.wd));
        e.0 += final_f1(p);
        e.1 += 1;
    }
    let mut best: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for ((checkpoint, _), (sum, n, lr, wd)) in sums {
        let mean = sum / n as f64;
        if best.get(&checkpoint).is_none_or(|b| mean > b.0) {
            best.insert(checkpoint, (mean, lr, wd));
        }
    }
    best
}

/// Every tag opened is closed in order (void elements aside), and the
/// document is one `<html>` element.
fn assert_well_formed(html: &str) {
    const VOID: [&str; 4] = ["meta", "br", "hr", "img"];
    let body = html.trim_start_matches("<!DOCTYPE html>").trim();
    assert!(body.starts_with("<html") && body.ends_with("</html>"));
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let close = rest.find('>').expect("unclosed `<`");
        let tag = &rest[..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ':')
            .collect();
        assert!(!name.is_empty(), "bad tag `<{tag}>`");
        if let Some(closing) = tag.strip_prefix('/') {
            let top = stack.pop().unwrap_or_default();
            assert_eq!(top, closing.trim(), "`</{closing}>` closes `<{top}>`");
        } else if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

/// The decision, first: the pick is the best run of the top group, its
/// runner-up the best run of the second, with their test metrics, checkpoint
/// and commands.
fn assert_decision(md: &str, points: &[Point], results: &Path) {
    // The decision, first: the pick is the best run of the top group, its
    // runner-up the best run of the second, with their test metrics.
    let decision = md
        .split("## Decision")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    assert!(md.find("## Decision") < md.find("## Overview"));
    // Independently: configurations by mean F1 over seeds, and the best
    // seed of each.
    let mut configs: BTreeMap<String, Vec<&Point>> = BTreeMap::new();
    for p in points {
        let key = format!("{}-{}/{}/{}", p.size, p.resolution, p.lr, p.wd);
        configs.entry(key).or_default().push(p);
    }
    let mut ranked: Vec<(f64, &Point)> = configs
        .values()
        .map(|ps| {
            let mean = ps.iter().map(|p| final_f1(p)).sum::<f64>() / ps.len() as f64;
            let best = *ps
                .iter()
                .max_by(|a, b| final_f1(a).total_cmp(&final_f1(b)))
                .unwrap();
            (mean, best)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(
        ranked[0].0 > ranked[1].0,
        "the hand-made sweep has a clear winner"
    );
    let top = |g: usize| (ranked[g].1.id.clone(), final_f1(ranked[g].1));
    for (role, (id, f1)) in [("pick", top(0)), ("runner-up", top(1))] {
        let row = decision
            .lines()
            .find(|l| l.starts_with(&format!("| {role} ")))
            .unwrap_or_else(|| panic!("no {role} row in\n{decision}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], id, "{row}");
        assert_eq!(cells[4], format::number(f1), "{row}");
        assert_eq!(cells[5], "4", "best step: {row}");
        assert_eq!(cells[6], format::number(f1 - 0.05), "test/field_f1: {row}");
    }
    let pick = top(0).0;
    assert!(decision.contains(&format!("/tmp/results/grid/trials/{pick}/best")));
    let results = results.display().to_string();
    assert!(decision.contains(&format!(
        "palisweep export grid/{pick} --out grid-{} --results {results}\npalisweep rerun grid/{pick} --results {results}\n",
        short_id(&pick)
    )), "{decision}");
    assert!(
        decision.contains("larger than the seed-to-seed spread"),
        "{decision}"
    );
    assert!(
        decision.contains("The seed varied, so the noise is the seed-to-seed spread"),
        "{decision}"
    );
}

#[test]
fn report_names_the_best_trial_per_checkpoint_and_writes_valid_html() {
    let dir = tempfile::tempdir().unwrap();
    let (store, points) = store_with_sweep(dir.path());
    let options = ReportOptions {
        budget_memory: Some(24 << 30),
        ..ReportOptions::default()
    };
    let report = build(&store, "grid", &options).unwrap();
    assert_eq!(report.metric, "val/field_f1");
    assert!(report.seeds_vary);
    assert_eq!(report.hours_label, "GPU-hours");

    // Best per checkpoint, against an independent computation.
    let expected = expected_best(&points);
    let got: BTreeMap<String, (f64, f64, f64)> = report
        .best_per_checkpoint
        .iter()
        .map(|&i| {
            let g = &report.groups[i];
            (
                g.checkpoint.clone(),
                (g.mean, g.lr.unwrap(), g.weight_decay.unwrap()),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len());
    for (checkpoint, (mean, lr, wd)) in &expected {
        let (m, l, w) = got[checkpoint];
        assert!((m - mean).abs() < 1e-9, "{checkpoint}: {m} vs {mean}");
        assert_eq!((l.to_bits(), w.to_bits()), (lr.to_bits(), wd.to_bits()));
    }
    // The failed trial is listed apart, not ranked.
    assert_eq!(report.excluded().len(), 1);
    assert!(report.groups.iter().all(|g| g.n() == 2));
    // 10b is best overall; only 3b fits 24 GiB.
    let rec = &report.recommendation;
    let overall = &report.groups[rec.overall.as_ref().unwrap().group];
    assert_eq!(overall.checkpoint, "10b-448");
    let budget = rec.budget.as_ref().unwrap().pick.as_ref().unwrap();
    assert_eq!(report.groups[budget.group].checkpoint, "3b-224");
    assert!(matches!(
        &report.methods,
        analysis::MethodComparison::NotApplicable { methods } if methods == &["lora"]
    ));

    let paths = write(&store, "grid", &options).unwrap();
    assert_eq!(paths.dir, dir.path().join("grid").join("report"));
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    for (checkpoint, (_, lr, wd)) in &expected {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| {checkpoint} ")))
            .unwrap_or_else(|| panic!("no row for {checkpoint} in\n{md}"));
        assert!(line.contains(&format::hyper(*lr)), "{line}");
        assert!(line.contains(&format::hyper(*wd)), "{line}");
    }
    assert!(md.contains("zz_failed") && md.contains("out of memory at batch 1"));
    // Only what varied: one method, so no LoRA-vs-QLoRA section.
    assert!(!md.contains("## LoRA vs QLoRA"), "{md}");
    assert!(md.contains("## Learning rate × weight decay"));
    assert_decision(&md, &points, dir.path());

    assert_well_formed(&html);
    let svgs = html.matches("<svg").count();
    // One figure of two heatmaps, two learning-curve plots, the best so far
    // against compute, one Pareto plot, one parallel-coordinates plot.
    assert_eq!(svgs, 6, "{html}");
    assert_eq!(html.matches("</svg>").count(), svgs);
    // Nothing to fetch: no script, link, source or URL but SVG's namespace.
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));
    assert!(
        !html
            .replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
            .contains("http")
    );
    // The GPU name's markup is escaped.
    assert!(html.contains("NVIDIA H100 &lt;80GB&gt;"));
}

#[test]
fn an_unknown_metric_is_refused_with_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_sweep(dir.path());
    let options = ReportOptions {
        metric: Some("val/nope".into()),
        ..ReportOptions::default()
    };
    let err = build(&store, "grid", &options).unwrap_err().to_string();
    assert!(
        err.contains("val/nope") && err.contains("val/field_f1"),
        "{err}"
    );
    // A lower-is-better metric ranks the other way.
    let options = ReportOptions {
        metric: Some("val/loss".into()),
        ..ReportOptions::default()
    };
    let report = build(&store, "grid", &options).unwrap();
    assert!(!report.higher_is_better);
    assert!(report.groups[0].mean <= report.groups[1].mean);
}

#[test]
fn a_sweep_with_no_ranked_trial_still_reports_its_failures() {
    let dir = tempfile::tempdir().unwrap();
    let failed = Point {
        id: "only_failed".into(),
        size: "3b",
        resolution: 224,
        lr: 1e-4,
        wd: 0.0,
        seed: 0,
    };
    let path = dir.path().join("palisweep.sqlite");
    let mut sink = StoreSink::new(Store::open(&path).unwrap());
    sink.write(&stream(&[], &failed)).unwrap();
    drop(sink);
    let store = Store::open_read_only(&path).unwrap();
    let out = dir.path().join("out");
    let options = ReportOptions {
        out: Some(out.clone()),
        budget_memory: Some(1 << 30),
        ..ReportOptions::default()
    };
    let paths = write(&store, "grid", &options).unwrap();
    assert_eq!(paths.markdown, out.join("report.md"));
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.contains("nothing to recommend"), "{md}");
    assert!(md.contains("only_failed"));
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert_well_formed(&html);
    assert_eq!(html.matches("<svg").count(), 0);
}

#[test]
fn scores_that_all_tie_at_zero_get_no_pick_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_sweep(dir.path());
    let options = ReportOptions {
        metric: Some("val/json_valid".into()),
        budget_memory: Some(24 << 30),
        ..ReportOptions::default()
    };
    let report = build(&store, "grid", &options).unwrap();
    let why = "no pick: every finished trial (16) scored 0 on val/json_valid";
    assert_eq!(
        report.decision,
        decision::Decision::NoSignal { why: why.into() }
    );
    let md = render_markdown(&report);
    assert!(md.contains(why), "{md}");
    // Neither the decision nor the recommendation names a pick.
    assert!(
        !md.contains("Pick:") && !md.contains("Overall:") && !md.contains("palisweep export"),
        "{md}"
    );
    assert!(!md.contains("Under the memory budget"), "{md}");
}

#[test]
fn no_signal_needs_equal_scores_or_nothing_above_the_floor() {
    let fact = analysis::TrialFacts::finished;
    let no_signal = decision::no_signal;
    assert_eq!(
        no_signal(&[fact("a", 0.5), fact("b", 0.5)], "val/loss", false).as_deref(),
        Some("no pick: every finished trial (2) scored 0.5 on val/loss")
    );
    assert_eq!(
        no_signal(&[fact("a", 0.5), fact("b", 0.4)], "val/loss", false),
        None
    );
    // One trial at the floor of a bounded metric: nothing learned.
    assert_eq!(
        no_signal(&[fact("a", 0.0)], "val/field_f1", true).as_deref(),
        Some("no pick: no finished trial scored above 0 on val/field_f1 (best 0)")
    );
    // A lone trial above the floor, or a loss at 0, is a signal.
    assert_eq!(no_signal(&[fact("a", 0.3)], "val/field_f1", true), None);
    assert_eq!(no_signal(&[fact("a", 0.0)], "val/loss", false), None);
    // Unranked trials do not count.
    let mut failed = fact("c", 0.9);
    failed.status = "failed".into();
    assert!(
        no_signal(
            &[fact("a", 0.0), fact("b", 0.0), failed],
            "val/field_f1",
            true
        )
        .is_some()
    );
}

#[test]
fn the_margin_says_whether_it_is_within_the_seed_spread() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_sweep(dir.path());
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    let within = decision::margin_text(
        &report,
        0.01,
        analysis::Noise::Estimated {
            std: 0.02,
            within: true,
        },
    );
    assert_eq!(
        within,
        "Margin over the runner-up: 0.01 on val/field_f1 (between the two configurations' means over seeds). This is within the seed-to-seed spread (pooled std 0.02 of one configuration across seeds): the two are not clearly different; run more seeds, or take the cheaper one."
    );
    let clear = decision::margin_text(
        &report,
        0.05,
        analysis::Noise::Estimated {
            std: 0.02,
            within: false,
        },
    );
    assert!(
        clear.contains("0.05") && clear.contains("larger than the seed-to-seed spread"),
        "{clear}"
    );
    let unknown = decision::margin_text(&report, 0.05, analysis::Noise::NoRepeats);
    assert!(unknown.contains("spread is unknown"), "{unknown}");
}

#[test]
fn commands_quote_the_results_root_only_when_it_is_not_the_default() {
    use std::path::Path;
    assert_eq!(
        decision::export_command("demo", "0123456789abcdef", Path::new("results")),
        "palisweep export demo/0123456789abcdef --out demo-0123456789ab"
    );
    assert_eq!(
        decision::rerun_command("demo", "0123456789abcdef", Path::new("my results")),
        "palisweep rerun demo/0123456789abcdef --results 'my results'"
    );
}

mod evidence;
/// The hand-made grid by hand (`final_f1`, s = +1 for 3b, l = +1 for lr
/// 3e-4, w = +1 for decay 0.1, d = ±1 for the seed): f = 0.65 − 0.05·s +
/// 0.05·l·s − 0.025·w·s + 0.005·d + const. Variances: checkpoint 0.0025,
/// lr × checkpoint 0.0025, decay × checkpoint 0.000625, seed 0.000025; lr
/// and decay alone nothing. Size and resolution change together: one factor.
#[test]
fn importance_finds_that_lr_matters_only_through_the_checkpoint() {
    use super::importance::{Importance, Method};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_sweep(dir.path());
    let report = build(&store, "grid", &ReportOptions::default()).unwrap();
    let Importance::Shares(s) = &report.importance else {
        panic!("{:?}", report.importance);
    };
    assert_eq!(
        s.method,
        Method::ExactGrid {
            cells: 16,
            per_cell: 1
        }
    );
    let total = 0.0025 + 0.0025 + 0.000_625 + 0.000_025;
    let main = |label: &str| {
        s.main
            .iter()
            .find(|(f, _)| f.label() == label)
            .unwrap_or_else(|| panic!("{label}: {s:?}"))
            .1
    };
    let pair = |a: &str, b: &str| {
        s.pairs
            .iter()
            .find(|(x, y, _)| {
                (x.label() == a && y.label() == b) || (x.label() == b && y.label() == a)
            })
            .map_or(0.0, |p| p.2)
    };
    let checkpoint = "model.resolution + model.size";
    let near = |got: f64, want: f64| (got - want).abs() < 1e-9;
    assert!(near(main(checkpoint), 0.0025 / total), "{s:?}");
    assert!(near(main("train.lr"), 0.0));
    assert!(near(main("train.weight_decay"), 0.0));
    assert!(near(main("experiment.seed"), 0.000_025 / total));
    assert!(near(pair("train.lr", checkpoint), 0.0025 / total));
    assert!(near(
        pair("train.weight_decay", checkpoint),
        0.000_625 / total
    ));
    assert!(near(s.residual.unwrap(), 0.0));
    let md = render_markdown(&report);
    let section = md
        .split("## Which hyperparameters mattered")
        .nth(1)
        .unwrap();
    assert!(
        section.contains("| train.lr × model.resolution + model.size ")
            || section.contains("| model.resolution + model.size × train.lr "),
        "{section}"
    );
    assert!(section.contains("Indicative only: 16 ranked trials"));
}
