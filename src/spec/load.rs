//! Loading a spec: embedded defaults < spec file (and what it `extends`) <
//! `PALISWEEP_*__*` environment < `--set`, merged with figment, extracted
//! into the typed [`Spec`], paths resolved, statically validated.

use std::path::{Component, Path, PathBuf};

use figment::Figment;
use figment::error::Kind;

use super::error::{Location, Problem, SpecError};
use super::layers::{Layer, Origin, join_key};
use super::schema::Spec;
use super::{DEFAULTS_TOML, checkpoint, validate};

/// What the caller adds on top of the spec file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--set key=value` flags, in order (later wins).
    pub sets: Vec<String>,
    /// Environment variables (all of them; only `PALISWEEP_*__*` are used).
    pub env: Vec<(String, String)>,
}

impl Overrides {
    pub fn from_process(sets: Vec<String>) -> Self {
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        env.sort();
        Overrides { sets, env }
    }
}

/// A loaded, statically valid spec with the layers it came from.
#[derive(Clone, Debug)]
pub struct LoadedSpec {
    /// The spec file as given on the command line.
    pub path: PathBuf,
    /// Its folder, absolute: data and checkpoint paths are relative to it.
    pub dir: PathBuf,
    /// The spec file's text as given.
    pub text: String,
    /// Lowest first.
    pub layers: Vec<Layer>,
    pub figment: Figment,
    /// The merged spec; `experiment.name` filled in, paths absolute.
    pub spec: Spec,
    pub name: String,
    /// The results root, absolute.
    pub results: PathBuf,
    /// The defaults alone, for trimming default-valued keys from trial ids.
    pub defaults: Spec,
}

pub fn load(path: &Path, overrides: &Overrides) -> Result<LoadedSpec, SpecError> {
    let cwd = std::env::current_dir().map_err(|source| SpecError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut layers = vec![Layer::defaults(DEFAULTS_TOML)];
    let mut files = Vec::new();
    read_with_bases(path, &mut files, &mut Vec::new())?;
    let text = files
        .last()
        .and_then(Layer::text)
        .unwrap_or_default()
        .to_owned();
    layers.extend(files);
    for (var, value) in &overrides.env {
        if let Some(layer) = Layer::env(var, value)? {
            layers.push(layer);
        }
    }
    for raw in &overrides.sets {
        layers.push(Layer::flag(raw)?);
    }
    // Before merging: a scalar where the defaults have a table would
    // replace the whole table, and the error would then blame the defaults.
    let problems: Vec<Problem> = layers[1..]
        .iter()
        .flat_map(|layer| shape_problems(&layers[0].table, layer, &[]))
        .collect();
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems));
    }

    let figment = layers
        .iter()
        .fold(Figment::new(), |f, layer| f.merge(layer.clone()));
    let defaults: Spec = Figment::from(layers[0].clone())
        .extract()
        .expect("the embedded defaults extract (checked by a unit test)");
    let dir = absolute(&cwd, path.parent().unwrap_or(Path::new(".")));

    let mut loaded = LoadedSpec {
        path: path.to_owned(),
        dir,
        text,
        layers,
        figment,
        spec: defaults.clone(),
        name: String::new(),
        results: PathBuf::new(),
        defaults,
    };
    let mut spec = loaded.extract(&[])?;
    loaded.name = spec.experiment.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "sweep".to_owned(), |s| s.to_string_lossy().into_owned())
    });
    spec.experiment.name = Some(loaded.name.clone());
    loaded.results = absolute(
        &loaded.base_dir(&["experiment", "results"], &cwd),
        Path::new(&spec.experiment.results),
    );
    spec.experiment.results = loaded.results.display().to_string();
    loaded.finish(&mut spec, &[], &cwd)?;

    let problems = validate::check(&spec)
        .into_iter()
        .map(|issue| loaded.problem(&issue.key, issue.message, issue.help))
        .collect::<Vec<_>>();
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems));
    }
    loaded.spec = spec;
    Ok(loaded)
}

/// Reads a spec and, first, the chain of files it `extends`. `chain` holds
/// the files being read, outermost first: a file is checked against it
/// before its bases are read, so a cycle of any length is an error, not an
/// endless recursion. Each entry is the file's identity and its path as
/// written (for the message).
fn read_with_bases(
    path: &Path,
    files: &mut Vec<Layer>,
    chain: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_owned(),
        source,
    })?;
    let layer = Layer::file(path, text)?;
    chain.push((identity(path), path.to_owned()));
    if let Some(base) = layer.get(&["extends"]) {
        let problem = |message: String, help: &str| {
            SpecError::Invalid(vec![Problem {
                location: layer.locate(&["extends"]),
                key: "extends".into(),
                message,
                help: Some(help.into()),
            }])
        };
        let Some(base) = base.as_str() else {
            return Err(problem(
                "expected a path to a base spec".into(),
                "extends = \"base.toml\"",
            ));
        };
        let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
        let base_identity = identity(&base_path);
        if let Some(start) = chain.iter().position(|(id, _)| *id == base_identity) {
            let cycle: Vec<String> = chain[start..]
                .iter()
                .chain(std::iter::once(&chain[start]))
                .map(|(_, given)| given.display().to_string())
                .collect();
            return Err(problem(
                format!("`extends` forms a cycle: {}", cycle.join(" extends ")),
                "remove `extends` from one of these files",
            ));
        }
        read_with_bases(&base_path, files, chain)?;
    }
    chain.pop();
    files.push(layer);
    Ok(())
}

/// Keys of `layer` that hold a value where `defaults` hold a table
/// (`experiment = 5`), at any depth below `path`.
fn shape_problems(defaults: &toml::Table, layer: &Layer, path: &[&str]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, default) in defaults {
        let toml::Value::Table(default) = default else {
            continue;
        };
        let mut segments = path.to_vec();
        segments.push(key);
        match layer.get(&segments) {
            Some(toml::Value::Table(_)) => {
                problems.extend(shape_problems(default, layer, &segments));
            }
            Some(other) => {
                let keys: Vec<&str> = default.keys().map(String::as_str).collect();
                let keys = if keys.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", keys.join(", "))
                };
                let name = join_key(&segments);
                let help = if path.is_empty() {
                    format!("write a [{name}] table and its keys on the lines below it{keys}")
                } else {
                    format!("write {key} = {{ ... }} with its keys{keys}")
                };
                problems.push(Problem {
                    location: layer.locate(&segments),
                    key: name,
                    message: format!("expected a table, found {} `{other}`", other.type_str()),
                    help: Some(help),
                });
            }
            None => {}
        }
    }
    problems
}

/// What identifies a spec file in an `extends` chain: its canonical path
/// (links and `./` resolved), or its absolute path when it cannot be
/// resolved (it is then reported as unreadable).
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| absolute(&std::env::current_dir().unwrap_or_default(), path))
}

impl LoadedSpec {
    /// Extracts the typed spec with extra layers on top (a trial's axis
    /// values); paths are resolved, the spec is not yet validated.
    pub fn extract(&self, extra: &[Layer]) -> Result<Spec, SpecError> {
        let figment = extra
            .iter()
            .fold(self.figment.clone(), |f, layer| f.merge(layer.clone()));
        figment.extract::<Spec>().map_err(|error| {
            let problems = error
                .into_iter()
                .map(|e| self.figment_problem(&e, extra))
                .collect();
            SpecError::Invalid(problems)
        })
    }

    /// The layer that set a key last, searching `extra` first.
    fn origin_layer<'a>(&'a self, segments: &[&str], extra: &'a [Layer]) -> Option<&'a Layer> {
        extra
            .iter()
            .rev()
            .chain(self.layers.iter().rev())
            .find(|layer| layer.contains(segments))
    }

    /// Where a key's effective value came from.
    pub fn locate(&self, segments: &[&str]) -> Location {
        self.locate_in(segments, &[])
    }

    pub fn locate_in(&self, segments: &[&str], extra: &[Layer]) -> Location {
        match self.origin_layer(segments, extra) {
            Some(Layer {
                origin: Origin::Axis(axis),
                ..
            }) => self.locate(&["sweep", "axes", axis]),
            Some(layer) => layer.locate(segments),
            // A key no layer has (unknown or missing): point at the closest
            // table that exists, else the spec file itself.
            None => (1..segments.len())
                .rev()
                .find_map(|n| {
                    self.origin_layer(&segments[..n], extra)
                        .filter(|l| l.origin != Origin::Defaults)
                        .map(|l| l.locate(&segments[..n]))
                })
                .unwrap_or_else(|| Location::FileOnly {
                    path: self.path.clone(),
                }),
        }
    }

    /// A problem at a key of the merged spec (with a trial's axis layers).
    pub fn problem(&self, key: &[String], message: String, help: Option<String>) -> Problem {
        self.problem_in(key, message, help, &[])
    }

    pub fn problem_in(
        &self,
        key: &[String],
        message: String,
        help: Option<String>,
        extra: &[Layer],
    ) -> Problem {
        let segments: Vec<&str> = key.iter().map(String::as_str).collect();
        Problem {
            location: self.locate_in(&segments, extra),
            key: join_key(key),
            message,
            help,
        }
    }

    fn figment_problem(&self, error: &figment::Error, extra: &[Layer]) -> Problem {
        let mut key: Vec<String> = error.path.clone();
        let (message, help) = match &error.kind {
            Kind::UnknownField(field, expected) => {
                // figment's path may or may not already end with the field.
                if key.last() != Some(field) {
                    key.push(field.clone());
                }
                let parent = &key[..key.len() - 1];
                let table = if parent.is_empty() {
                    "the top level".to_owned()
                } else {
                    format!("[{}]", join_key(parent))
                };
                let help = match nearest(field, expected) {
                    Some(best) => format!(
                        "did you mean `{best}`? (keys of {table}: {})",
                        expected.join(", ")
                    ),
                    None => format!("keys of {table}: {}", expected.join(", ")),
                };
                (format!("unknown key in {table}"), Some(help))
            }
            Kind::UnknownVariant(value, expected) => (
                format!("unknown value `{value}`"),
                Some(match nearest(value, expected) {
                    Some(best) => format!("did you mean `{best}`? valid: {}", expected.join(" | ")),
                    None => format!("valid: {}", expected.join(" | ")),
                }),
            ),
            Kind::MissingField(field) => {
                if key.last().map(String::as_str) != Some(field.as_ref()) {
                    key.push(field.to_string());
                }
                ("missing required key".to_owned(), None)
            }
            Kind::InvalidType(actual, expected) => (
                format!("expected {}, found {actual}", plain_type(expected)),
                Some(type_help(&key).to_owned()),
            ),
            Kind::InvalidValue(actual, expected) => (
                format!("invalid value {actual}: expected {expected}"),
                Some(type_help(&key).to_owned()),
            ),
            Kind::Message(message) => (message.clone(), Some(type_help(&key).to_owned())),
            other => (other.to_string(), None),
        };
        let segments: Vec<&str> = key.iter().map(String::as_str).collect();
        Problem {
            location: self.locate_in(&segments, extra),
            key: join_key(&key),
            message,
            help,
        }
    }

    /// The folder a path-valued key resolves against.
    fn base_dir(&self, segments: &[&str], cwd: &Path) -> PathBuf {
        match self.origin_layer(segments, &[]) {
            Some(layer) => match layer.origin {
                Origin::File(_) => absolute(cwd, layer.base_dir().unwrap_or(Path::new("."))),
                Origin::Axis(_) => self.dir.clone(),
                _ => cwd.to_owned(),
            },
            None => cwd.to_owned(),
        }
    }

    /// Completes an extracted spec: makes `data.path` and a local
    /// `model.checkpoint` absolute (axis values resolve against the spec's
    /// folder), and takes size and resolution from a published checkpoint id
    /// unless they were set explicitly.
    pub fn finish(&self, spec: &mut Spec, extra: &[Layer], cwd: &Path) -> Result<(), SpecError> {
        let axis_base = |segments: &[&str]| {
            if extra.iter().any(|l| l.contains(segments)) {
                self.dir.clone()
            } else {
                self.base_dir(segments, cwd)
            }
        };
        if !spec.data.path.starts_with(super::GENERATED_PREFIX) && !spec.data.path.is_empty() {
            let base = axis_base(&["data", "path"]);
            spec.data.path = absolute(&base, Path::new(&spec.data.path))
                .display()
                .to_string();
        }
        if let Some(raw) = spec.model.checkpoint.clone() {
            let base = axis_base(&["model", "checkpoint"]);
            match checkpoint::CheckpointRef::parse(&raw, &base) {
                Ok(checkpoint::CheckpointRef::Local(path)) => {
                    spec.model.checkpoint = Some(path.display().to_string());
                }
                Ok(checkpoint::CheckpointRef::Hub(id)) => {
                    if let Some((size, resolution)) = checkpoint::parse_published_id(&id) {
                        let is_default = |segments: &[&str]| {
                            self.origin_layer(segments, extra)
                                .is_none_or(|l| l.origin == Origin::Defaults)
                        };
                        if is_default(&["model", "size"]) {
                            spec.model.size = size;
                        }
                        if is_default(&["model", "resolution"]) {
                            spec.model.resolution = resolution;
                        }
                    }
                }
                Ok(checkpoint::CheckpointRef::Tiny) => {}
                Err(message) => {
                    return Err(SpecError::Invalid(vec![Problem {
                        location: self.locate_in(&["model", "checkpoint"], extra),
                        key: "model.checkpoint".into(),
                        message,
                        help: Some(checkpoint::HELP.into()),
                    }]));
                }
            }
        }
        Ok(())
    }
}

/// serde names Rust types; users wrote TOML.
fn plain_type(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        s if s.starts_with("struct ") || s.starts_with("a map") => "a table",
        other => other,
    }
}

fn type_help(key: &[String]) -> &'static str {
    match join_key(key).as_str() {
        "train.warmup" => "a fraction of the total steps below 1 (0.05) or a step count (100)",
        "eval.every" => "\"epoch\" or a number of optimiser steps (500)",
        "model.resolution" => "one of 224, 448, 896",
        "model.size" => "one of \"3b\", \"10b\", \"28b\"",
        "model.attn_logit_softcapping" | "model.final_logit_softcapping" => {
            "false (off) or a positive number (50.0)"
        }
        k if k.starts_with("sweep.axes") => {
            "a list of values ([1e-5, 3e-5]) or, for strategy = \"random\", { choice = [..] }, { uniform = [lo, hi] } or { loguniform = [lo, hi] }"
        }
        _ => "see `palisweep defaults` for every key, its type and an example",
    }
}

/// The closest candidate by edit distance, if close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `base.join(path)`, normalised lexically (no filesystem access).
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` relative to `base` (both absolute and normalised), lexically.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for c in &path[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the defaults (set or shown commented out), as `table.key`.
    fn documented_keys() -> Vec<String> {
        let mut keys = Vec::new();
        let table: toml::Table = DEFAULTS_TOML.parse().unwrap();
        for (name, section) in &table {
            if let toml::Value::Table(section) = section {
                keys.extend(section.keys().map(|k| format!("{name}.{k}")));
            }
        }
        let mut current = String::new();
        for line in DEFAULTS_TOML.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.to_owned();
            } else if let Some((key, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(" = "))
                && !current.is_empty()
                && !key.contains(' ')
                && !key.contains('"')
            {
                keys.push(format!("{current}.{key}"));
            }
        }
        keys
    }

    #[test]
    fn defaults_extract_and_are_valid() {
        let spec: Spec = Figment::from(Layer::defaults(DEFAULTS_TOML))
            .extract()
            .unwrap();
        assert!(validate::check(&spec).is_empty());
    }

    #[test]
    fn every_default_key_is_documented() {
        let docs = include_str!("../../docs/spec.md");
        let keys = documented_keys();
        assert!(keys.len() > 50, "found only {} keys", keys.len());
        for key in keys {
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/spec.md does not document `{key}`"
            );
        }
    }

    #[test]
    fn every_optional_key_is_accepted() {
        // The commented-out keys of the defaults, uncommented, must extract.
        let uncommented: String = DEFAULTS_TOML
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let table: toml::Table = uncommented.parse().expect("uncommented defaults parse");
        let spec: Spec = Figment::from(figment::providers::Serialized::defaults(table))
            .extract()
            .unwrap();
        assert!(spec.model.checkpoint.is_some() && spec.train.max_steps.is_some());
    }

    #[test]
    fn paths_normalise_lexically() {
        assert_eq!(
            absolute(Path::new("/a/b"), Path::new("../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            relative_to(Path::new("/a/c/d"), Path::new("/a/b")),
            PathBuf::from("../c/d")
        );
        assert_eq!(
            relative_to(Path::new("/a"), Path::new("/a")),
            PathBuf::from(".")
        );
    }

    #[test]
    fn nearest_suggests_typos_only() {
        let keys = ["lr", "epochs", "batch_size", "weight_decay"];
        assert_eq!(nearest("batchsize", &keys), Some("batch_size"));
        assert_eq!(nearest("wieght_decay", &keys), Some("weight_decay"));
        assert_eq!(nearest("completely_else", &keys), None);
    }
}
