//! `palisweep plan SPEC`: load, expand, estimate, place, print.

use crate::cli::PlanArgs;
use crate::layout::ResultsRoot;
use crate::plan::build::build;
use crate::plan::placement::Limits;
use crate::plan::render;
use crate::spec::load::{Overrides, load};
use crate::sweep::expand::expand;

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let overrides = Overrides::from_process(args.spec.sets);
    let loaded = load(&args.spec.spec, &overrides)?;
    let expansion = expand(&loaded, args.yes)?;
    let inventory =
        super::runtime::inventory(args.devices.as_deref(), &loaded.spec.resources.devices)?;
    let limits = Limits {
        memory_headroom: loaded.spec.resources.memory_headroom,
        max_trials_per_device: loaded.spec.resources.max_trials_per_device,
    };
    let recorded = ResultsRoot::new(&loaded.results)
        .sweep(&loaded.name)
        .recorded_trials();
    let plan = build(&loaded.name, expansion, inventory, limits, &recorded)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&render::to_json(&plan))?);
    } else {
        print!("{}", render::to_table(&plan));
    }
    Ok(())
}
