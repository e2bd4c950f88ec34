//! `palisweep fetch SPEC`: download every checkpoint the spec's trials
//! name, ahead of time (cluster nodes often have no internet).

use std::collections::BTreeSet;

use anyhow::Context as _;

use super::output::outln;
use crate::cli::FetchArgs;
use crate::layout::ResultsRoot;
use crate::model::checkpoint::{hub, tiny};
use crate::spec::checkpoint::{self, CheckpointRef};
use crate::spec::load::{Overrides, load};
use crate::sweep::expand::expand;

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let loaded = load(&args.spec.spec, &Overrides::from_process(args.spec.sets))?;
    let expansion = expand(&loaded, true)?;
    let cache = ResultsRoot::new(&loaded.results).cache();
    let mut seen = BTreeSet::new();
    for trial in &expansion.trials {
        let resolved = checkpoint::resolve(&trial.spec.model);
        let revision = trial.spec.model.revision.clone();
        if !seen.insert((resolved.display.clone(), revision.clone())) {
            continue;
        }
        let path = match &resolved.reference {
            CheckpointRef::Tiny => tiny::ensure(&cache, resolved.size, resolved.resolution)?,
            CheckpointRef::Hub(id) => hub::resolve(id, revision.as_deref())
                .with_context(|| format!("cannot fetch {id}"))?,
            CheckpointRef::Local(dir) => {
                anyhow::ensure!(
                    dir.join("config.json").is_file(),
                    "{} (model.checkpoint) is not a checkpoint folder: it has no config.json",
                    dir.display()
                );
                dir.clone()
            }
        };
        outln!("{:<40} {}", resolved.display, path.display())?;
    }
    Ok(())
}
