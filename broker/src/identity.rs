//! The broker's identity, kept in `DATA/identity`: a UUID created once for this data directory,
//! and the id of the cluster it belongs to (learned from the router at the first registration).
//! The router binds a broker id to the UUID of the first process that registers it and refuses
//! any other, so a second process started with the same `--id` on another (say, empty) data dir
//! cannot take over the id's shards. A data dir from before identities existed gets its UUID at
//! its next start.
//!
//! The file is a few `key = value` lines, written atomically (a temp file, fsync, rename, fsync
//! of the directory): a crash leaves either the old or the new file, never half of one, since a
//! lost or changed UUID would lock the broker out of its own id.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use shardq_protocol::{is_uuid, random_uuid};

/// Name of the identity file inside the data directory.
pub const FILE: &str = "identity";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// This data directory's broker process identity.
    pub uuid: String,
    /// The cluster this data directory belongs to; None until the first registration.
    pub cluster: Option<String>,
}

/// The identity file cannot be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {what} the broker identity file {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the broker identity file {}, line {line}, is corrupt: {reason}. It names this data \
         dir's broker process; restore it from a backup, or, if this data dir's contents are \
         lost anyway, start on an empty data dir and run `shardq broker replace ID`",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl Identity {
    /// Reads `dir`'s identity, creating (and persisting) a new UUID if it has none yet.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let uuid = random_uuid().map_err(|source| IdentityError::Io {
                    what: "create a UUID for",
                    path: path.clone(),
                    source,
                })?;
                let identity = Identity {
                    uuid,
                    cluster: None,
                };
                identity.save(dir)?;
                Ok(identity)
            }
            Err(source) => Err(IdentityError::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    /// Writes the identity to `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |what| {
            let path = path.clone();
            move |source| IdentityError::Io { what, path, source }
        };
        let text = format!(
            "# shardq broker identity: created once for this data dir; never copy it to another\n\
             uuid = {}\ncluster = {}\n",
            self.uuid,
            self.cluster.as_deref().unwrap_or("")
        );
        let mut f = fs::File::create(&tmp).map_err(io("write"))?;
        f.write_all(text.as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("replace"))?;
        // The rename itself is durable only once the directory is synced.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the directory of"))?;
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Identity, IdentityError> {
    let corrupt = |line: usize, reason: String| IdentityError::Corrupt {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        corrupt(line, "it is not UTF-8 text".into())
    })?;
    let (mut uuid, mut cluster) = (None, None);
    let mut last = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| corrupt(n, format!("{line:?} is not `key = value`")))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "uuid" if uuid.is_some() => return Err(corrupt(n, "a second `uuid`".into())),
            "cluster" if cluster.is_some() => return Err(corrupt(n, "a second `cluster`".into())),
            "uuid" | "cluster" if !value.is_empty() && !is_uuid(value) => {
                return Err(corrupt(n, format!("`{key}` is {value:?}, not a UUID")))
            }
            "uuid" if value.is_empty() => return Err(corrupt(n, "`uuid` is empty".into())),
            "uuid" => uuid = Some(value.to_ascii_lowercase()),
            "cluster" => cluster = Some((!value.is_empty()).then(|| value.to_ascii_lowercase())),
            other => return Err(corrupt(n, format!("unknown field {other:?}"))),
        }
    }
    let uuid = uuid.ok_or_else(|| corrupt(last.max(1), "the `uuid` field is missing".into()))?;
    Ok(Identity {
        uuid,
        cluster: cluster.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back_with_the_cluster_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        assert!(is_uuid(&first.uuid));
        assert_eq!(first.cluster, None);
        assert_eq!(Identity::load_or_create(dir.path()).unwrap(), first);
        let joined = Identity {
            cluster: Some("cccccccc-cccc-4ccc-8ccc-cccccccccccc".into()),
            ..first.clone()
        };
        joined.save(dir.path()).unwrap();
        assert_eq!(Identity::load_or_create(dir.path()).unwrap(), joined);
        assert!(!dir.path().join("identity.tmp").exists());
        // Another data dir is another process.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            Identity::load_or_create(other.path()).unwrap().uuid,
            first.uuid
        );
    }

    #[test]
    fn a_corrupt_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        for (text, line, needle) in [
            ("uuid = nope\n", 1, "not a UUID"),
            ("# c\nuuid\n", 2, "key = value"),
            ("cluster =\n", 1, "`uuid` field is missing"),
            (
                "uuid = 11111111-1111-4111-8111-111111111111\ncolour = red\n",
                2,
                "unknown field",
            ),
            ("\u{0}\n\n\u{ff}", 1, ""),
        ] {
            std::fs::write(dir.path().join(FILE), text).unwrap();
            let e = Identity::load_or_create(dir.path())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("line {line}")) && e.contains("identity") && e.contains(needle),
                "{text:?}: {e}"
            );
        }
        std::fs::write(dir.path().join(FILE), b"uuid = x\n\xff\xfe").unwrap();
        let e = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
    }
}
