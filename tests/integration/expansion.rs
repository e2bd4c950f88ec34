//! Expansion counts and the stability of trial ids.

use crate::util::{Test, plan_ids};

fn count(spec: &str, extra: &[&str]) -> usize {
    plan_ids(&Test::new().spec(spec), extra).len()
}

#[test]
fn grid_is_the_cartesian_product() {
    let spec =
        "[sweep.axes]\n\"train.lr\" = [1e-5, 2e-5, 3e-5]\n\"model.size\" = [\"3b\", \"10b\"]\n";
    assert_eq!(count(spec, &[]), 6);
    assert_eq!(count("", &[]), 1, "no axes: one trial");
}

#[test]
fn zip_groups_walk_together_and_exclude_drops() {
    let zipped = "[sweep]\nzip = [[\"model.resolution\", \"train.batch_size\"]]\n\
        [sweep.axes]\n\"model.resolution\" = [224, 448]\n\"train.batch_size\" = [8, 2]\n\"train.lr\" = [1e-5, 3e-5]\n";
    assert_eq!(count(zipped, &[]), 4);
    let excluded = "[sweep]\nexclude = [{ \"model.size\" = \"10b\", \"train.method\" = \"lora\" }]\n\
        [sweep.axes]\n\"model.size\" = [\"3b\", \"10b\"]\n\"train.method\" = [\"lora\", \"qlora\"]\n";
    assert_eq!(count(excluded, &[]), 3);
}

#[test]
fn random_search_is_seeded_and_reproducible() {
    let spec = |seed: u64| {
        format!(
            "[experiment]\nseed = {seed}\n[sweep]\nstrategy = \"random\"\nsamples = 6\n\
             [sweep.axes]\n\"train.lr\" = {{ loguniform = [1e-6, 1e-3] }}\n\
             \"train.weight_decay\" = {{ uniform = [0.0, 0.1] }}\n\"train.method\" = [\"lora\", \"qlora\"]\n"
        )
    };
    let first = plan_ids(&Test::new().spec(&spec(1)), &[]);
    let again = plan_ids(&Test::new().spec(&spec(1)), &[]);
    let other = plan_ids(&Test::new().spec(&spec(2)), &[]);
    assert_eq!(first.len(), 6);
    assert_eq!(first, again);
    assert_ne!(first, other);

    let test = Test::new().spec(&spec(1));
    let json = test
        .run_in(&["plan", "spec.toml", "--json", "--devices", "cuda:8x80GiB"])
        .code(0)
        .json();
    for trial in json["trials"].as_array().unwrap() {
        let lr = trial["params"]["train.lr"].as_f64().unwrap();
        assert!(
            (1e-6..=1e-3).contains(&lr),
            "lr {lr} outside the distribution"
        );
    }
}

#[test]
fn ids_are_long_hex_and_ignore_order_formatting_and_layers() {
    let a = "[train]\nlr = 3e-5\nepochs = 2\n\n[model]\ncheckpoint = \"tiny\"\n\n[sweep.axes]\n\"train.batch_size\" = [2, 4]\n";
    let b = "model.checkpoint = 'tiny'\n[sweep]\naxes = { 'train.batch_size' = [2, 4] }\n[train]\nepochs   = 2\nlr = 0.00003  # same value\n";
    let ids_a = plan_ids(&Test::new().spec(a), &[]);
    assert_eq!(ids_a.len(), 2);
    assert!(
        ids_a
            .iter()
            .all(|id| id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()))
    );
    assert_eq!(ids_a, plan_ids(&Test::new().spec(b), &[]));

    // The same values from --set and from the environment give the same ids.
    let bare = "[model]\ncheckpoint = \"tiny\"\n[sweep.axes]\n\"train.batch_size\" = [2, 4]\n";
    let via_flags = plan_ids(
        &Test::new().spec(bare),
        &["--set", "train.lr=3e-5", "--set", "train.epochs=2"],
    );
    assert_eq!(ids_a, via_flags);
    let env_test = Test::new()
        .spec(bare)
        .env("PALISWEEP_TRAIN__LR", "3e-5")
        .env("PALISWEEP_TRAIN__EPOCHS", "2");
    assert_eq!(ids_a, plan_ids(&env_test, &[]));
}

#[test]
fn defaults_written_out_do_not_change_ids_but_results_relevant_keys_do() {
    let base = plan_ids(&Test::new().spec("[model]\ncheckpoint = \"tiny\"\n"), &[]);
    let explicit = plan_ids(
        &Test::new().spec(
            "[model]\ncheckpoint = \"tiny\"\n[train]\nlr = 2e-5\nepochs = 3\n[lora]\nr = 8\n",
        ),
        &[],
    );
    assert_eq!(base, explicit);
    // Resources and outputs do not enter the id...
    let resources = plan_ids(
        &Test::new().spec("[model]\ncheckpoint = \"tiny\"\n[resources]\nretries = 5\n[experiment]\nname = \"other\"\nresults = \"elsewhere\"\n"),
        &[],
    );
    assert_eq!(base, resources);
    // ...but anything that changes the computation does.
    let seed = plan_ids(
        &Test::new().spec("[model]\ncheckpoint = \"tiny\"\n[experiment]\nseed = 1\n"),
        &[],
    );
    let rank = plan_ids(
        &Test::new().spec("[model]\ncheckpoint = \"tiny\"\n[lora]\nr = 16\n"),
        &[],
    );
    assert_ne!(base, seed);
    assert_ne!(base, rank);
    assert_ne!(seed, rank);
}

#[test]
fn a_published_id_and_the_equivalent_size_resolution_are_one_trial() {
    let by_id = plan_ids(
        &Test::new().spec("[model]\ncheckpoint = \"google/paligemma2-10b-pt-448\"\n"),
        &[],
    );
    let by_keys = plan_ids(
        &Test::new().spec("[model]\nsize = \"10b\"\nresolution = 448\n"),
        &[],
    );
    assert_eq!(by_id, by_keys);
}

#[test]
fn ids_do_not_depend_on_where_the_spec_lives() {
    let spec = "[data]\npath = \"data/export\"\n[sweep.axes]\n\"train.lr\" = [1e-5, 3e-5]\n";
    let here = Test::new().spec(spec);
    let moved = Test::new().file("deep/er/spec.toml", spec);
    let ids_here = plan_ids(&here, &[]);
    let out = moved
        .run_in(&[
            "plan",
            "deep/er/spec.toml",
            "--json",
            "--devices",
            "cuda:8x80GiB",
        ])
        .code(0)
        .json();
    let mut ids_moved: Vec<String> = out["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    ids_moved.sort();
    assert_eq!(ids_here, ids_moved);
    // A different dataset folder is a different trial.
    let other = plan_ids(
        &Test::new().spec(&spec.replace("data/export", "data/other")),
        &[],
    );
    assert_ne!(ids_here, other);
}
