//! A checkpoint's fingerprint, for refusing to rerun a trial on different
//! weights: sha256 over each file's name and size, the full text of the
//! JSON and tokenizer files, and each safetensors file's header (tensor
//! names, dtypes, shapes, offsets). Weight values are not read: hashing
//! tens of gigabytes per run would cost minutes; a Hugging Face cache
//! already names each file by its content hash, which the header and size
//! stand in for here.

use std::io::Read as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The fingerprint of the checkpoint folder `dir` (hex).
pub fn checkpoint_fingerprint(dir: &Path) -> std::io::Result<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in names {
        let path = dir.join(&name);
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            continue;
        }
        hasher.update(name.as_bytes());
        hasher.update(meta.len().to_le_bytes());
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match extension.as_deref() {
            Some("safetensors") => hasher.update(safetensors_header(&path)?),
            Some("json" | "model") => hasher.update(std::fs::read(&path)?),
            _ => {}
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The 8-byte length and the JSON header of a safetensors file.
fn safetensors_header(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let size = u64::from_le_bytes(len).min(100 << 20);
    let mut header = len.to_vec();
    file.take(size).read_to_end(&mut header)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_headers_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0, 0, 128, 63]);
        write("model.safetensors", &file);
        write("config.json", b"{}");
        let first = checkpoint_fingerprint(dir.path()).unwrap();
        assert_eq!(first, checkpoint_fingerprint(dir.path()).unwrap());
        write("config.json", b"{\"x\": 1}");
        assert_ne!(first, checkpoint_fingerprint(dir.path()).unwrap());
    }
}
