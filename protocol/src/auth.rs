//! The cluster secret and the handshake's mutual HMAC challenge-response.
//!
//! Every node and admin client of a cluster holds the same secret (a token file, mode 0600). The
//! secret never crosses the wire: each side of a handshake sends a fresh random nonce, and each
//! proves it holds the secret with HMAC-SHA256(secret, role | its peer's nonce | its own nonce).
//! Both nonces go into both proofs, so a proof recorded on one connection is worthless on another,
//! and the role tag keeps a server's proof from being replayed as a client's.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Bytes of a handshake nonce and of a proof.
pub const NONCE_LEN: usize = 32;
/// Bytes of a generated secret (written as 64 hex digits).
pub const SECRET_LEN: usize = 32;
/// Fewest bytes a token file's secret may have: shorter ones can be guessed.
pub const MIN_SECRET_LEN: usize = 16;
/// The environment variable every shardq command reads the token file's path from.
pub const TOKEN_ENV: &str = "SHARDQ_TOKEN_FILE";
/// The token file's name inside a `shardq up` data directory.
pub const TOKEN_FILE_NAME: &str = "cluster.token";

/// The cluster secret. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// What can be wrong with a token file.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("the token file {path} {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write the token file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl Secret {
    /// A secret from raw bytes (tests, or a token read elsewhere).
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(bytes.into())
    }

    /// A fresh random secret.
    pub fn generate() -> Secret {
        Secret(random_bytes::<SECRET_LEN>().to_vec().into())
    }

    /// Reads a token file: its first line, trimmed, is the secret: at least 32 hex digits (16
    /// random bytes; [`Secret::write_new`] writes 64). Anything else is refused: a secret a
    /// person chose could be guessed offline from one recorded handshake.
    pub fn load(path: &Path) -> Result<Secret, TokenError> {
        let text = std::fs::read(path).map_err(|e| TokenError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| TokenError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let text = String::from_utf8(text)
            .map_err(|_| invalid("is not UTF-8 text (it should hold 64 hex digits)".into()))?;
        let line = text.lines().next().unwrap_or("").trim();
        if line.is_empty() {
            return Err(invalid("is empty: line 1 should hold the secret".into()));
        }
        let Some(bytes) = decode_hex(line) else {
            return Err(invalid(
                "line 1 is not hex digits: a cluster secret is random bytes written in hex \
                 (`shardq token create PATH` writes one)"
                    .into(),
            ));
        };
        if bytes.len() < MIN_SECRET_LEN {
            return Err(invalid(format!(
                "line 1 holds a secret of {} bytes; at least {MIN_SECRET_LEN} are needed \
                 (`shardq token create PATH` writes a good one)",
                bytes.len()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the token file can be read by other users; `chmod 600` it"
                    );
                }
            }
        }
        Ok(Secret(bytes.into()))
    }

    /// Creates `path` (mode 0600; refuses to overwrite) holding a new random secret.
    pub fn write_new(path: &Path) -> Result<Secret, TokenError> {
        let secret = Secret::generate();
        let err = |e: std::io::Error| TokenError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        writeln!(f, "{}", encode_hex(&secret.0)).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(secret)
    }

    /// HMAC-SHA256 over a role tag and two nonces.
    fn mac(&self, role: &[u8], first: &[u8], second: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"shardq-handshake-v1\0");
        mac.update(role);
        mac.update(&[0]);
        mac.update(first);
        mac.update(second);
        mac
    }

    /// The client's proof: over the server's nonce, then its own.
    pub fn client_proof(&self, client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
        self.mac(b"client", server_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// The server's proof: over the client's nonce, then its own.
    pub fn server_proof(&self, client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
        self.mac(b"server", client_nonce, server_nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks a client's proof in constant time.
    pub fn verify_client(&self, client_nonce: &[u8], server_nonce: &[u8], proof: &[u8]) -> bool {
        self.mac(b"client", server_nonce, client_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    /// Whether `token` (a bearer token: the token file's hex line) is this secret, compared in
    /// constant time (as MACs of the same message under both keys).
    pub fn matches_token(&self, token: &str) -> bool {
        let Some(bytes) = decode_hex(token.trim()) else {
            return false;
        };
        let other = Secret(bytes.into());
        let mine = self.mac(b"bearer", b"", b"").finalize().into_bytes();
        other.mac(b"bearer", b"", b"").verify_slice(&mine).is_ok()
    }

    /// Checks a server's proof in constant time.
    pub fn verify_server(&self, client_nonce: &[u8], server_nonce: &[u8], proof: &[u8]) -> bool {
        self.mac(b"server", client_nonce, server_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

/// Where a command finds the cluster secret, in order: `--token-file` (or `SHARDQ_TOKEN_FILE`,
/// which clap folds into the flag), then `default_dir/cluster.token` if that file exists (the
/// default `shardq up` data directory). `Ok(None)`: no secret anywhere.
pub fn find_secret(
    flag: Option<&Path>,
    default_dir: Option<&Path>,
) -> Result<Option<Secret>, TokenError> {
    if let Some(path) = flag {
        return Secret::load(path).map(Some);
    }
    if let Ok(env) = std::env::var(TOKEN_ENV) {
        if !env.is_empty() {
            return Secret::load(Path::new(&env)).map(Some);
        }
    }
    match default_dir.map(|d| d.join(TOKEN_FILE_NAME)) {
        Some(path) if path.exists() => Secret::load(&path).map(Some),
        _ => Ok(None),
    }
}

/// Fresh bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS source only fails on systems too broken to run a server at all.
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_out_only_with_the_same_secret_nonces_and_role() {
        let s = Secret::generate();
        let (c, v) = (random_bytes::<NONCE_LEN>(), random_bytes::<NONCE_LEN>());
        let cp = s.client_proof(&c, &v);
        assert!(s.verify_client(&c, &v, &cp));
        // Another secret, swapped nonces, another role or a truncated proof all fail.
        assert!(!Secret::generate().verify_client(&c, &v, &cp));
        assert!(!s.verify_client(&v, &c, &cp));
        assert!(!s.verify_server(&c, &v, &cp));
        assert!(!s.verify_client(&c, &v, &cp[..16]));
        let sp = s.server_proof(&c, &v);
        assert!(s.verify_server(&c, &v, &sp));
        assert_ne!(cp, sp);
    }

    #[test]
    fn token_files_round_trip_and_bad_ones_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let s = Secret::write_new(&path).unwrap();
        assert_eq!(Secret::load(&path).unwrap(), s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(Secret::write_new(&path).is_err(), "never overwrites");
        std::fs::write(dir.path().join("words"), "correct horse battery staple\n").unwrap();
        let e = Secret::load(&dir.path().join("words"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not hex"), "{e}");
        std::fs::write(dir.path().join("short"), "abcd\n").unwrap();
        let e = Secret::load(&dir.path().join("short"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("at least 16"), "{e}");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let e = Secret::load(&dir.path().join("empty"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = Secret::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        // Default location: found only when the file exists.
        assert!(
            find_secret(None, Some(dir.path().join("nowhere").as_path()))
                .unwrap()
                .is_none()
        );
    }
}
