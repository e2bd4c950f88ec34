//! Spec errors: each names where the offending value came from (file, line
//! and column; environment variable; `--set` flag), the key, and a fix.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

use crate::secrets::redact_text;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    /// A file layer, when the key could not be pinned to a line.
    FileOnly {
        path: PathBuf,
    },
    Env {
        var: String,
    },
    Flag {
        raw: String,
    },
    Defaults,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Location::FileOnly { path } => write!(f, "{}", path.display()),
            Location::Env { var } => write!(f, "environment variable {var}"),
            Location::Flag { raw } => write!(f, "flag --set {}", redact_text(raw)),
            Location::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// The dotted key (`train.lr`, `sweep.axes."train.lr"`).
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.location, self.key, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "invalid `{}`: {message}\n  help: write --set key=value, e.g. --set train.lr=3e-5 or --set 'sweep.axes.\"train.lr\"=[1e-5, 3e-5]'",
        redact_text(raw)
    )]
    BadFlag { raw: String, message: String },
    #[error("environment variable {var}: {message}")]
    BadEnv { var: String, message: String },
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

fn render_problems(problems: &[Problem]) -> String {
    // In reading order: by file, then line, then column.
    let mut sorted: Vec<&Problem> = problems.iter().collect();
    sorted.sort_by_key(|p| match &p.location {
        Location::File { path, line, column } => (0, path.clone(), *line, *column),
        Location::FileOnly { path } => (0, path.clone(), usize::MAX, 0),
        _ => (1, PathBuf::new(), 0, 0),
    });
    let mut out = String::new();
    for (i, p) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&p.to_string());
    }
    if problems.len() > 1 {
        let _ = write!(out, "\n{} problems in the spec", problems.len());
    }
    out
}
