//! Turning what a user names (a folder, a hub id, `tiny`) into a local
//! checkpoint folder.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::model::checkpoint::{hub, tiny};
use crate::spec::checkpoint::CheckpointRef;
use crate::variant::{Resolution, Size};

/// `tiny` (= `tiny-3b-224`) or `tiny-<size>-<resolution>`.
fn parse_tiny(raw: &str) -> Option<anyhow::Result<(Size, Resolution)>> {
    let rest = raw.strip_prefix("tiny")?;
    if rest.is_empty() {
        return Some(Ok((Size::B3, Resolution::R224)));
    }
    let rest = rest.strip_prefix('-')?;
    let (size, resolution) = rest.split_once('-')?;
    Some(
        size.parse::<Size>()
            .and_then(|s| resolution.parse::<Resolution>().map(|r| (s, r)))
            .map_err(anyhow::Error::msg),
    )
}

/// A local folder for a `--checkpoint` value.
pub fn resolve(raw: &str, revision: Option<&str>, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(tiny_spec) = parse_tiny(raw) {
        let (size, resolution) = tiny_spec?;
        return tiny::ensure(cache, size, resolution).context("cannot create the tiny checkpoint");
    }
    let cwd = std::env::current_dir()?;
    match CheckpointRef::parse(raw, &cwd).map_err(anyhow::Error::msg)? {
        CheckpointRef::Local(dir) => {
            anyhow::ensure!(
                dir.join("config.json").is_file(),
                "{} is not a checkpoint folder: it has no config.json",
                dir.display()
            );
            Ok(dir)
        }
        CheckpointRef::Hub(id) => Ok(hub::resolve(&id, revision)?),
        CheckpointRef::Tiny => unreachable!("`tiny` is handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_names_parse() {
        assert_eq!(
            parse_tiny("tiny").unwrap().unwrap(),
            (Size::B3, Resolution::R224)
        );
        assert_eq!(
            parse_tiny("tiny-10b-448").unwrap().unwrap(),
            (Size::B10, Resolution::R448)
        );
        assert!(parse_tiny("tiny-5b-224").unwrap().is_err());
        assert!(parse_tiny("google/paligemma2-3b-pt-224").is_none());
    }
}
