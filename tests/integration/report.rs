//! `palisweep report` through the real binary, on a synthetic sweep: the
//! best trial per checkpoint in the report is the one the raw metrics say.

use std::collections::BTreeMap;

use crate::util::Test;

#[test]
fn the_report_names_the_best_trial_per_checkpoint_and_embeds_its_plots() {
    let test = Test::new().spec(
        "[experiment]\nname = \"r\"\n[data]\npath = \"generated:json\"\n\
         [model]\ncheckpoint = \"tiny\"\n\
         [train]\nmethod = \"synthetic\"\nbatch_size = 2\ngrad_accum = 1\n\
         [synthetic]\nsteps = 10\nstep_ms = 1\n\
         [sweep.axes]\n\"model.size\" = [\"3b\", \"10b\"]\n\"model.resolution\" = [224, 448]\n\
         \"train.lr\" = [1e-6, 1e-4, 1e-3]\n\
         [resources]\nmax_trials_per_device = 4\n",
    );
    test.run_in(&[
        "run",
        "spec.toml",
        "--devices",
        "fake-cuda:2x80GiB",
        "--results",
        "results",
        "--quiet",
    ])
    .code(0);
    // Independently: the lowest val/loss per trial, from the raw metrics.
    let csv = test
        .run_in(&["export-metrics", "r", "--results", "results"])
        .code(0)
        .stdout
        .clone();
    let mut best: BTreeMap<String, f64> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        if cols[5] == "val/loss" {
            let value: f64 = cols[6].parse().unwrap();
            let entry = best.entry(cols[1].to_owned()).or_insert(f64::INFINITY);
            *entry = entry.min(value);
        }
    }
    assert_eq!(best.len(), 12);
    // Each trial's checkpoint from its resolved config.
    let mut per_checkpoint: BTreeMap<String, (f64, String)> = BTreeMap::new();
    for (id, value) in &best {
        let config = std::fs::read_to_string(
            test.path()
                .join("results/r/trials")
                .join(id)
                .join("trial.toml"),
        )
        .unwrap();
        let config: toml::Table = toml::from_str(&config).unwrap();
        let model = config["model"].as_table().unwrap();
        let label = format!(
            "{}-{}",
            model["size"].as_str().unwrap(),
            model["resolution"].as_integer().unwrap()
        );
        let entry = per_checkpoint
            .entry(label)
            .or_insert((f64::INFINITY, String::new()));
        if *value < entry.0 {
            *entry = (*value, id.clone());
        }
    }
    assert_eq!(per_checkpoint.len(), 4);

    test.run_in(&["report", "r", "--results", "results"])
        .code(0)
        .stdout_has("report.md")
        .stdout_has("report.html");
    let md = std::fs::read_to_string(test.path().join("results/r/report/report.md")).unwrap();
    let section = md
        .split("## Best per checkpoint")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    for (label, (_, id)) in &per_checkpoint {
        let row = section
            .lines()
            .find(|l| l.contains(&format!(" {label} ")))
            .unwrap_or_else(|| panic!("no row for {label} in:\n{section}"));
        assert!(row.contains(id.as_str()), "{label}: expected {id} in {row}");
    }
    let html = std::fs::read_to_string(test.path().join("results/r/report/report.html")).unwrap();
    assert!(html.trim_start().starts_with("<!DOCTYPE html>") || html.contains("<html"));
    assert!(html.trim_end().ends_with("</html>"));
    let svgs = html.matches("<svg").count();
    assert!(svgs >= 2, "{svgs} plots");
    assert_eq!(svgs, html.matches("</svg>").count());
    assert!(!html.contains("<script"), "self-contained, no scripts");
}
