//! `palisweep init-tiny`: a random checkpoint with the structure of a
//! published one, scaled down, in Hugging Face layout.

use anyhow::Context as _;

use super::output::outln;
use crate::cli::InitTinyArgs;
use crate::model::checkpoint::tiny;
use crate::variant::{Resolution, Size};

pub fn run(args: &InitTinyArgs) -> anyhow::Result<()> {
    let size: Size = args.size.parse().map_err(anyhow::Error::msg)?;
    let resolution: Resolution = args.resolution.parse().map_err(anyhow::Error::msg)?;
    tiny::write(&args.out, size, resolution, args.seed)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    outln!(
        "wrote the tiny twin of PaliGemma 2 {size}@{resolution} (seed {}) to {}",
        args.seed,
        args.out.display()
    )?;
    Ok(())
}
