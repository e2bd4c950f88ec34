//! Hugging Face hub checkpoints: resolved through the standard cache layout
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`),
//! downloaded with `hf-hub` when online (`HF_TOKEN` for gated repos;
//! `HF_HUB_OFFLINE=1` forbids the network).
//!
//! Cache layout: `models--<owner>--<name>/refs/<revision>` holds a commit
//! hash, `snapshots/<commit>/` holds the files.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// Files a checkpoint folder must have, besides its weights.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
/// Files fetched when present in the repo.
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "generation_config.json",
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "checkpoint `{id}` (revision {revision}) is not in the Hugging Face cache at {}{}\n  \
         help: on a machine with internet, run `palisweep fetch SPEC` (or `huggingface-cli download {id}`) \
         with HF_TOKEN set for the gated google/paligemma2-* repos, then copy the cache folder or point \
         HF_HUB_CACHE at it",
        cache.display(),
        if *offline { " and HF_HUB_OFFLINE is set" } else { "" }
    )]
    NotCached {
        id: String,
        revision: String,
        cache: PathBuf,
        offline: bool,
    },
    #[error("cached checkpoint `{id}` at {} lacks {file}: the download was incomplete; run `palisweep fetch` again", path.display())]
    Incomplete {
        id: String,
        path: PathBuf,
        file: String,
    },
    #[error(
        "cannot download `{id}`: {message}\n  help: the google/paligemma2-* repos are gated: accept the licence on the model page and set HF_TOKEN"
    )]
    Download { id: String, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The hub cache folder the environment selects.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".cache/huggingface/hub"),
        |h| PathBuf::from(h).join(".cache/huggingface/hub"),
    )
}

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn token() -> Option<String> {
    if let Ok(token) = std::env::var("HF_TOKEN")
        && !token.trim().is_empty()
    {
        return Some(token.trim().to_owned());
    }
    let home = std::env::var_os("HF_HOME").map_or_else(
        || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")),
        |h| Some(PathBuf::from(h)),
    )?;
    std::fs::read_to_string(home.join("token"))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The snapshot folder of `id` at `revision` in `cache`, if the cache has
/// a complete checkpoint there.
pub fn cached_snapshot(
    cache: &Path,
    id: &str,
    revision: &str,
) -> Result<Option<PathBuf>, HubError> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        revision.to_owned()
    } else {
        match std::fs::read_to_string(repo.join("refs").join(revision)) {
            Ok(hash) => hash.trim().to_owned(),
            Err(_) => return Ok(None),
        }
    };
    let snapshot = repo.join("snapshots").join(commit);
    if !snapshot.is_dir() {
        return Ok(None);
    }
    check_complete(id, &snapshot)?;
    Ok(Some(snapshot))
}

/// Every file a checkpoint needs is present (shards named by the index too).
fn check_complete(id: &str, dir: &Path) -> Result<(), HubError> {
    let missing = |file: &str| HubError::Incomplete {
        id: id.to_owned(),
        path: dir.to_owned(),
        file: file.to_owned(),
    };
    for file in REQUIRED {
        if !dir.join(file).is_file() {
            return Err(missing(file));
        }
    }
    let index = dir.join(INDEX);
    if index.is_file() {
        for shard in shard_names(&index)? {
            if !dir.join(&shard).is_file() {
                return Err(missing(&shard));
            }
        }
    } else if !dir.join(SINGLE).is_file() {
        return Err(missing(SINGLE));
    }
    Ok(())
}

fn shard_names(index: &Path) -> Result<Vec<String>, HubError> {
    let text = std::fs::read_to_string(index).map_err(|source| HubError::Io {
        path: index.to_owned(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| HubError::Io {
        path: index.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let mut shards: Vec<String> = json["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// A local folder for `id`: the cached snapshot, downloading it first when
/// it is missing and the network is allowed.
pub fn resolve(id: &str, revision: Option<&str>) -> Result<PathBuf, HubError> {
    let revision = revision.unwrap_or("main");
    let cache = cache_dir();
    if let Some(snapshot) = cached_snapshot(&cache, id, revision)? {
        return Ok(snapshot);
    }
    if offline() {
        return Err(HubError::NotCached {
            id: id.to_owned(),
            revision: revision.to_owned(),
            cache,
            offline: true,
        });
    }
    download(id, revision, &cache)
}

/// Downloads a checkpoint into the cache and returns its snapshot folder.
pub fn download(id: &str, revision: &str, cache: &Path) -> Result<PathBuf, HubError> {
    let failed = |message: String| HubError::Download {
        id: id.to_owned(),
        message,
    };
    let api = ApiBuilder::from_cache(Cache::new(cache.to_owned()))
        .with_token(token())
        .with_progress(true)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        id.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let info = repo.info().map_err(|e| failed(e.to_string()))?;
    let present: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let mut snapshot = None;
    for file in REQUIRED
        .iter()
        .chain(OPTIONAL)
        .filter(|f| present.contains(f))
    {
        let path = repo.get(file).map_err(|e| failed(format!("{file}: {e}")))?;
        snapshot = path.parent().map(Path::to_path_buf);
    }
    if present.contains(&INDEX) {
        let index = repo
            .get(INDEX)
            .map_err(|e| failed(format!("{INDEX}: {e}")))?;
        for shard in shard_names(&index)? {
            repo.get(&shard)
                .map_err(|e| failed(format!("{shard}: {e}")))?;
        }
    } else {
        repo.get(SINGLE)
            .map_err(|e| failed(format!("{SINGLE}: {e}")))?;
    }
    let snapshot = snapshot.ok_or_else(|| failed("the repo has no config.json".into()))?;
    check_complete(id, &snapshot)?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_snapshot(cache: &Path, id: &str, commit: &str, files: &[&str]) -> PathBuf {
        let repo = cache.join(format!("models--{}", id.replace('/', "--")));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        for f in files {
            std::fs::write(snapshot.join(f), "{}").unwrap();
        }
        snapshot
    }

    #[test]
    fn resolves_refs_and_commits_in_the_cache_layout() {
        let cache = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snapshot = fake_snapshot(
            cache.path(),
            "google/paligemma2-3b-pt-224",
            commit,
            &["config.json", "tokenizer.json", "model.safetensors"],
        );
        let by_ref = cached_snapshot(cache.path(), "google/paligemma2-3b-pt-224", "main").unwrap();
        assert_eq!(by_ref, Some(snapshot.clone()));
        let by_commit =
            cached_snapshot(cache.path(), "google/paligemma2-3b-pt-224", commit).unwrap();
        assert_eq!(by_commit, Some(snapshot));
        assert_eq!(
            cached_snapshot(cache.path(), "google/other", "main").unwrap(),
            None
        );
    }

    #[test]
    fn an_incomplete_snapshot_names_the_missing_file() {
        let cache = tempfile::tempdir().unwrap();
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        fake_snapshot(
            cache.path(),
            "a/b",
            commit,
            &["config.json", "tokenizer.json", INDEX],
        );
        let snapshot = cache.path().join("models--a--b/snapshots").join(commit);
        std::fs::write(
            snapshot.join(INDEX),
            r#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let err = cached_snapshot(cache.path(), "a/b", "main").unwrap_err();
        assert!(
            err.to_string().contains("model-00001-of-00002.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn not_cached_error_says_where_and_how() {
        let err = HubError::NotCached {
            id: "google/paligemma2-3b-pt-448".into(),
            revision: "main".into(),
            cache: PathBuf::from("/tmp/hub"),
            offline: true,
        }
        .to_string();
        assert!(err.contains("google/paligemma2-3b-pt-448"));
        assert!(err.contains("/tmp/hub"));
        assert!(err.contains("palisweep fetch"));
        assert!(err.contains("HF_HUB_OFFLINE"));
    }
}
