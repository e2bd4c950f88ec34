//! Hugging Face hub checkpoints: resolved through the standard cache layout
//! (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`),
//! downloaded with `hf-hub` when online from `HF_ENDPOINT` (default
//! `https://huggingface.co`; `HF_TOKEN` for gated repos; `HF_HUB_OFFLINE=1`
//! forbids the network). A failed request says whether the network (DNS, a
//! connection) or the hub (a refused token, no such repo) is the cause.
//!
//! Cache layout: `models--<owner>--<name>/refs/<revision>` holds a commit
//! hash, `snapshots/<commit>/` holds the files.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
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
/// The hub `hf-hub` and `huggingface_hub` use when `HF_ENDPOINT` is unset.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

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
    /// The network failed before the hub answered: DNS, a refused or
    /// broken connection, a proxy.
    #[error(
        "cannot download `{id}` (it is not in the Hugging Face cache at {}): {endpoint} cannot be reached: {cause}\n  \
         help: this is a network failure, not a permission one: connect this machine (or set HTTPS_PROXY, \
         or HF_ENDPOINT for a mirror); or run `palisweep fetch SPEC` where there is internet, copy the cache \
         folder here and point HF_HUB_CACHE at it (HF_HUB_OFFLINE=1 then keeps palisweep off the network)",
        cache.display()
    )]
    Unreachable {
        id: String,
        endpoint: String,
        cache: PathBuf,
        /// What failed: DNS, the connection, ...
        cause: String,
    },
    /// The hub answered 401 or 403: no access without (another) token.
    #[error(
        "cannot download `{id}`: {endpoint} refused it (HTTP {status}){}\n  \
         help: the repo is gated, private or does not exist: check model.checkpoint; for the gated \
         google/paligemma2-* repos accept the licence on the model page and set HF_TOKEN to a token \
         of that account",
        if *token { " with the token given" } else { " without a token (HF_TOKEN is unset)" }
    )]
    Denied {
        id: String,
        endpoint: String,
        status: u16,
        token: bool,
    },
    /// The hub answered 404.
    #[error(
        "cannot download `{id}`: {endpoint} has no such repo or revision `{revision}` (HTTP 404)\n  \
         help: check model.checkpoint and model.revision"
    )]
    NotFound {
        id: String,
        revision: String,
        endpoint: String,
    },
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

/// The hub endpoint: `HF_ENDPOINT`, as `huggingface_hub` reads it, or the
/// public hub.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim().trim_end_matches('/').to_owned())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
}

fn api(cache: &Path, progress: bool) -> Result<Api, ApiError> {
    ApiBuilder::from_cache(Cache::new(cache.to_owned()))
        .with_endpoint(endpoint())
        .with_token(token())
        .with_progress(progress)
        .build()
}

/// Whether `id` at `revision` can be downloaded: one request for the repo's
/// description, no files. What a sweep checks once, before its trials
/// would each try (and fail) the download.
pub fn probe(id: &str, revision: &str) -> Result<(), HubError> {
    let cache = cache_dir();
    let failed = |e: ApiError| request_error(id, revision, &cache, &e);
    let api = api(&cache, false).map_err(failed)?;
    api.repo(Repo::with_revision(
        id.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ))
    .info()
    .map_err(failed)?;
    Ok(())
}

/// A failed hub request, by its cause: the network, the hub's refusal, a
/// missing repo, or anything else.
fn request_error(id: &str, revision: &str, cache: &Path, error: &ApiError) -> HubError {
    let request = match error {
        ApiError::RequestError(e) => Some(e.as_ref()),
        ApiError::TooManyRetries(inner) => match inner.as_ref() {
            ApiError::RequestError(e) => Some(e.as_ref()),
            _ => None,
        },
        _ => None,
    };
    match request {
        Some(ureq::Error::Status(status @ (401 | 403), _)) => HubError::Denied {
            id: id.to_owned(),
            endpoint: endpoint(),
            status: *status,
            token: token().is_some(),
        },
        Some(ureq::Error::Status(404, _)) => HubError::NotFound {
            id: id.to_owned(),
            revision: revision.to_owned(),
            endpoint: endpoint(),
        },
        Some(ureq::Error::Transport(transport)) if unreachable(transport.kind()) => {
            let what = match transport.kind() {
                ureq::ErrorKind::Dns => "the host name does not resolve (DNS)",
                ureq::ErrorKind::ConnectionFailed => "the connection failed",
                ureq::ErrorKind::ProxyConnect | ureq::ErrorKind::InvalidProxyUrl => {
                    "the proxy failed"
                }
                _ => "the network failed",
            };
            HubError::Unreachable {
                id: id.to_owned(),
                endpoint: endpoint(),
                cache: cache.to_owned(),
                cause: format!("{what} ({transport})"),
            }
        }
        _ => HubError::Download {
            id: id.to_owned(),
            message: error.to_string(),
        },
    }
}

/// Transport failures that mean the hub was never reached.
fn unreachable(kind: ureq::ErrorKind) -> bool {
    use ureq::ErrorKind as K;
    matches!(
        kind,
        K::Dns | K::ConnectionFailed | K::Io | K::ProxyConnect | K::InvalidProxyUrl
    )
}

/// Downloads a checkpoint into the cache and returns its snapshot folder.
pub fn download(id: &str, revision: &str, cache: &Path) -> Result<PathBuf, HubError> {
    let failed = |message: String| HubError::Download {
        id: id.to_owned(),
        message,
    };
    let request = |e: ApiError| request_error(id, revision, cache, &e);
    let api = api(cache, true).map_err(request)?;
    let repo = api.repo(Repo::with_revision(
        id.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let info = repo.info().map_err(request)?;
    let present: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    // Each file's failure says its name, and its cause when it is known.
    let get = |file: &str| {
        repo.get(file).map_err(|e| {
            let message = format!("{file}: {e}");
            match request_error(id, revision, cache, &e) {
                HubError::Download { .. } => failed(message),
                known => known,
            }
        })
    };
    let mut snapshot = None;
    for file in REQUIRED
        .iter()
        .chain(OPTIONAL)
        .filter(|f| present.contains(f))
    {
        snapshot = get(file)?.parent().map(Path::to_path_buf);
    }
    if present.contains(&INDEX) {
        for shard in shard_names(&get(INDEX)?)? {
            get(&shard)?;
        }
    } else {
        get(SINGLE)?;
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
