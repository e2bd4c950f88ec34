//! What `model.checkpoint` names: the built-in tiny architecture, a Hugging
//! Face hub id, or a local folder in Hugging Face layout.

use std::path::{Path, PathBuf};

use crate::variant::{Resolution, Size};

use super::schema::{Model, Variant};

pub const HELP: &str = "use `tiny`, a Hugging Face id such as google/paligemma2-3b-pt-448, \
or a local folder (absolute, or starting with ./ or ../, relative to the spec's folder)";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointRef {
    /// The built-in scaled-down twin of (size, resolution).
    Tiny,
    Hub(String),
    Local(PathBuf),
}

impl CheckpointRef {
    /// Classifies a `model.checkpoint` value; relative folders resolve
    /// against `base`. Needs no network and no checkpoint files, except
    /// that an existing folder wins over a hub id of the same spelling.
    pub fn parse(raw: &str, base: &Path) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "tiny" {
            return Ok(CheckpointRef::Tiny);
        }
        if raw.is_empty() {
            return Err("the checkpoint is empty".into());
        }
        let looks_local = raw.starts_with('/')
            || raw.starts_with("./")
            || raw.starts_with("../")
            || raw.starts_with("~/")
            || raw == "."
            || raw == "..";
        let expanded = match raw.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from(raw), |h| PathBuf::from(h).join(rest)),
            None => PathBuf::from(raw),
        };
        let local = super::load::absolute(base, &expanded);
        if looks_local || local.is_dir() {
            return Ok(CheckpointRef::Local(local));
        }
        if is_hub_id(raw) {
            return Ok(CheckpointRef::Hub(raw.to_owned()));
        }
        Err(format!(
            "`{raw}` is neither `tiny`, a Hugging Face id (owner/name) nor an existing folder"
        ))
    }
}

fn is_hub_id(raw: &str) -> bool {
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(raw.split_once('/'), Some((owner, name)) if valid(owner) && valid(name))
}

/// `google/paligemma2-<size>-<variant>-<resolution>`.
pub fn published_id(size: Size, variant: Variant, resolution: Resolution) -> String {
    format!("google/paligemma2-{size}-{}-{resolution}", variant.as_str())
}

/// Size and resolution read off a published PaliGemma 2 id
/// (`google/paligemma2-10b-pt-448`, `…-mix-224`, `…-ft-docci-448`).
pub fn parse_published_id(id: &str) -> Option<(Size, Resolution)> {
    let name = id.strip_prefix("google/paligemma2-")?;
    let mut parts = name.split('-');
    let size = match parts.next()? {
        "3b" => Size::B3,
        "10b" => Size::B10,
        "28b" => Size::B28,
        _ => return None,
    };
    let resolution = parts.next_back()?.parse::<u32>().ok()?;
    Some((size, Resolution::try_from(resolution).ok()?))
}

/// The checkpoint a model table means, and the architecture to plan with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedCheckpoint {
    pub reference: CheckpointRef,
    /// What to show and record: `tiny-3b-224`, the hub id, or the folder.
    pub display: String,
    pub size: Size,
    pub resolution: Resolution,
}

/// Resolves `[model]` (after path resolution: a local checkpoint is absolute).
pub fn resolve(model: &Model) -> ResolvedCheckpoint {
    let (size, resolution) = (model.size, model.resolution);
    match model.checkpoint.as_deref() {
        None => {
            let id = published_id(size, model.variant, resolution);
            ResolvedCheckpoint {
                reference: CheckpointRef::Hub(id.clone()),
                display: id,
                size,
                resolution,
            }
        }
        Some("tiny") => ResolvedCheckpoint {
            reference: CheckpointRef::Tiny,
            display: format!("tiny-{size}-{resolution}"),
            size,
            resolution,
        },
        Some(raw) if Path::new(raw).is_absolute() => ResolvedCheckpoint {
            reference: CheckpointRef::Local(PathBuf::from(raw)),
            display: raw.to_owned(),
            size,
            resolution,
        },
        Some(id) => {
            let (size, resolution) = parse_published_id(id).unwrap_or((size, resolution));
            ResolvedCheckpoint {
                reference: CheckpointRef::Hub(id.to_owned()),
                display: id.to_owned(),
                size,
                resolution,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_checkpoint_values() {
        let base = Path::new("/nonexistent/spec");
        assert_eq!(CheckpointRef::parse("tiny", base), Ok(CheckpointRef::Tiny));
        assert_eq!(
            CheckpointRef::parse("google/paligemma2-3b-pt-448", base),
            Ok(CheckpointRef::Hub("google/paligemma2-3b-pt-448".into()))
        );
        assert_eq!(
            CheckpointRef::parse("./ckpt", base),
            Ok(CheckpointRef::Local("/nonexistent/spec/ckpt".into()))
        );
        assert!(CheckpointRef::parse("not an id", base).is_err());
        assert!(CheckpointRef::parse("a/b/c", base).is_err());
    }

    #[test]
    fn published_ids_round_trip() {
        for size in Size::ALL {
            for resolution in Resolution::ALL {
                let id = published_id(size, Variant::Pt, resolution);
                assert_eq!(parse_published_id(&id), Some((size, resolution)));
            }
        }
        assert_eq!(
            parse_published_id("google/paligemma2-10b-ft-docci-448"),
            Some((Size::B10, Resolution::R448))
        );
        assert_eq!(parse_published_id("google/paligemma-3b-pt-224"), None);
    }
}
