//! `palisweep init-data`: the synthetic dataset of coloured shapes, in
//! Roboflow's PaliGemma JSONL layout.

use anyhow::Context as _;

use super::output::outln;
use crate::cli::InitDataArgs;
use crate::data::synthetic::{self, SyntheticOptions, SyntheticTask};

pub fn run(args: &InitDataArgs) -> anyhow::Result<()> {
    let task: SyntheticTask = args.task.parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.image_size >= 16,
        "--image-size must be at least 16 pixels"
    );
    let options = SyntheticOptions {
        task,
        seed: args.seed,
        train: args.train,
        valid: args.valid,
        test: args.test,
        image_size: args.image_size,
    };
    synthetic::write(&args.out, &options)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    outln!(
        "wrote {} train / {} valid / {} test {} examples to {}",
        args.train,
        args.valid,
        args.test,
        task.as_str(),
        args.out.display()
    )?;
    Ok(())
}
