//! The read-only store commands: `status`, `ls`, `show` (and `show
//! --predictions`), `export-metrics`, `report`.
//! They open the store read-only, so they work while a sweep writes it.

use std::io::Write as _;

use anyhow::Context as _;

use super::output::{out, outln};
use crate::cli::{ExportMetricsArgs, LsArgs, ReportArgs, ShowArgs, StatusArgs};
use crate::devices::grammar::parse_bytes;
use crate::layout::ResultsRoot;
use crate::report::{ReportError, ReportOptions, write as write_report};
use crate::track::show_predictions::{self, Request};
use crate::track::store::{ExportFormat, Store, StoreError, views};

fn open(results: &std::path::Path) -> anyhow::Result<Store> {
    Ok(Store::open_read_only(&ResultsRoot::new(results).store())?)
}

/// `result`, naming the store's file when SQLite failed to read it (a
/// damaged page surfaces only when a query reaches it).
fn reading<T>(store: &Store, result: Result<T, impl Into<anyhow::Error>>) -> anyhow::Result<T> {
    result.map_err(Into::into).map_err(|error: anyhow::Error| {
        let sqlite = error.chain().any(|cause| {
            matches!(cause.downcast_ref(), Some(StoreError::Sqlite(_)))
                || matches!(
                    cause.downcast_ref(),
                    Some(ReportError::Store(StoreError::Sqlite(_)))
                )
        });
        if sqlite {
            error.context(format!("cannot read the store {}", store.path().display()))
        } else {
            error
        }
    })
}

fn print(text: &str, json: Option<serde_json::Value>) -> anyhow::Result<()> {
    match json {
        Some(value) => outln!("{}", serde_json::to_string_pretty(&value)?)?,
        None => out!("{text}")?,
    }
    Ok(())
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let store = open(&args.results)?;
    let view = reading(&store, views::status(&store, args.sweep.as_deref()))?;
    print(&view.to_text(), args.json.then(|| view.to_json()))
}

pub fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let store = open(&args.results)?;
    let view = reading(&store, views::ls(&store))?;
    print(&view.to_text(), args.json.then(|| view.to_json()))
}

pub fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let store = open(&args.results)?;
    if args.predictions {
        return show_predictions(args, &store);
    }
    let view = reading(&store, views::show(&store, &args.trial))?;
    print(&view.to_text(), args.json.then(|| view.to_json()))
}

/// `show --predictions`: what was read goes first, on stderr for JSON
/// lines so that stdout holds the stored lines alone.
fn show_predictions(args: &ShowArgs, store: &Store) -> anyhow::Result<()> {
    let request = Request {
        trial: &args.trial,
        split: &args.split,
        step: args.step,
    };
    let view = reading(
        store,
        show_predictions::load(store, &args.results, &request),
    )?;
    if args.format == "jsonl" {
        eprint!("{}", view.header());
        out!("{}", view.to_jsonl())?;
    } else {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(show_predictions::DEFAULT_WIDTH);
        out!("{}\n{}", view.header(), view.to_table(width))?;
    }
    Ok(())
}

pub fn export_metrics(args: &ExportMetricsArgs) -> anyhow::Result<()> {
    let store = open(&args.results)?;
    let format: ExportFormat = args.format.parse()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = crate::track::store::export_metrics(&store, &args.sweep, format, &mut out)
        .map(|_| ())
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(out.flush()?));
    match written {
        // `| head` closing the pipe is not an error.
        Err(e) if broken_pipe(&e) => Ok(()),
        other => reading(&store, other),
    }
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    let is_broken = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(is_broken)
            || matches!(cause.downcast_ref::<StoreError>(), Some(StoreError::Io(e)) if is_broken(e))
    })
}

pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let budget_memory = match &args.budget_memory {
        Some(text) => {
            Some(parse_bytes(text).with_context(|| format!("invalid --budget-memory `{text}`"))?)
        }
        None => None,
    };
    let options = ReportOptions {
        out: args.out.clone(),
        budget_memory,
        metric: args.metric.clone(),
        gallery: Some(args.gallery),
    };
    let store = open(&args.results)?;
    let paths = reading(&store, write_report(&store, &args.sweep, &options))?;
    outln!("{}", paths.markdown.display())?;
    outln!("{}", paths.html.display())?;
    Ok(())
}
