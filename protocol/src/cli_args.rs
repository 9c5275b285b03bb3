//! Command-line options every shardq command shares for the cluster secret and, on servers, for
//! connection limits (the `cli` feature, so that the library itself needs no clap).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::{find_secret, Secret, TokenError, TOKEN_ENV, TOKEN_FILE_NAME};
use crate::server::{
    ServerConfig, DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RESERVED_CONNECTIONS,
};

/// Longest idle or frame timeout accepted (a day): beyond it a deadline could overflow.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Where `shardq up` keeps its cluster by default; its `cluster.token` is found without a flag.
pub const DEFAULT_DATA_DIR: &str = "./shardq-data";

/// The cluster secret of a client or admin command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// File holding the cluster secret (`shardq up` writes DATA/cluster.token); the
    /// SHARDQ_TOKEN_FILE environment variable serves too. Without either, and without
    /// ./shardq-data/cluster.token, the command connects without the secret and may use only what
    /// the cluster leaves open (`--open-data-plane`).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The secret, if one was given or is found in the default data directory.
    pub fn secret(&self) -> Result<Option<Secret>, TokenError> {
        find_secret(
            self.token_file.as_deref(),
            Some(Path::new(DEFAULT_DATA_DIR)),
        )
    }
}

/// Authentication and connection limits of a server (router, broker).
#[derive(clap::Args, Debug, Clone)]
pub struct ListenerArgs {
    /// File holding the cluster secret (`shardq up` writes DATA/cluster.token; `shardq token
    /// create PATH` makes one); the SHARDQ_TOKEN_FILE environment variable serves too. Peers
    /// prove it in the handshake; it never crosses the wire.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Let clients without the secret produce, fetch, commit offsets and read metadata. Control,
    /// admin and transfer requests still need it.
    #[arg(long)]
    pub open_data_plane: bool,

    /// Run without a cluster secret: anyone who reaches the port may do anything, including
    /// deleting data. For throwaway local experiments only.
    #[arg(long, conflicts_with_all = ["token_file", "open_data_plane"])]
    pub insecure_no_auth: bool,

    /// Connections held at once; the last --reserved-connections of them only for peers that
    /// prove the secret.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=1_000_000))]
    pub max_connections: usize,

    /// Connection slots kept for peers that prove the secret (brokers, admin commands, clients
    /// with the token), so a flood of other connections never locks them out.
    #[arg(long, default_value_t = DEFAULT_RESERVED_CONNECTIONS)]
    pub reserved_connections: usize,

    /// Close a connection that has nothing in flight and sends nothing for this many ms.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
    pub idle_timeout_ms: u64,

    /// Close a connection whose frame (or handshake) does not arrive whole within this many ms
    /// of its first byte, or that does not take an answer within as long.
    #[arg(long, default_value_t = DEFAULT_FRAME_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
    pub frame_timeout_ms: u64,
}

impl Default for ListenerArgs {
    /// The flags' defaults (no token file named).
    fn default() -> Self {
        let d = Listener::default();
        ListenerArgs {
            token_file: None,
            open_data_plane: false,
            insecure_no_auth: false,
            max_connections: d.max_connections,
            reserved_connections: d.reserved_connections,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            frame_timeout_ms: d.frame_timeout.as_millis() as u64,
        }
    }
}

/// What a server's options say about authentication and connections.
#[derive(Clone, Debug)]
pub struct Listener {
    pub secret: Option<Secret>,
    pub open_data_plane: bool,
    pub max_connections: usize,
    pub reserved_connections: usize,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
}

impl Default for Listener {
    fn default() -> Self {
        let d = ServerConfig::default();
        Listener {
            secret: None,
            open_data_plane: false,
            max_connections: d.max_connections,
            reserved_connections: d.reserved_connections,
            idle_timeout: d.idle_timeout,
            frame_timeout: d.frame_timeout,
        }
    }
}

impl Listener {
    /// The server configuration for these settings and a frame size.
    pub fn server_config(&self, max_frame: usize) -> ServerConfig {
        ServerConfig {
            max_frame,
            max_connections: self.max_connections,
            reserved_connections: self.reserved_connections,
            idle_timeout: self.idle_timeout,
            frame_timeout: self.frame_timeout,
            secret: self.secret.clone(),
            open_data_plane: self.open_data_plane,
            ..ServerConfig::default()
        }
    }
}

impl ListenerArgs {
    /// Resolves the secret: `--token-file`/`SHARDQ_TOKEN_FILE`, else
    /// ./shardq-data/cluster.token; none of them and no `--insecure-no-auth` is an error that
    /// says how to get one.
    pub fn listener(&self) -> Result<Listener, String> {
        let secret = if self.insecure_no_auth {
            tracing::warn!(
                "running WITHOUT a cluster secret (--insecure-no-auth): anyone who can reach \
                 this port can register brokers, move and delete data"
            );
            None
        } else {
            match find_secret(
                self.token_file.as_deref(),
                Some(Path::new(DEFAULT_DATA_DIR)),
            ) {
                Ok(Some(s)) => Some(s),
                Ok(None) => {
                    return Err(format!(
                        "no cluster secret: pass --token-file PATH or set {TOKEN_ENV}=PATH \
                         (`shardq up` writes DATA/{TOKEN_FILE_NAME}; `shardq token create PATH` \
                         makes a new one), or --insecure-no-auth to run without authentication"
                    ))
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        if self.reserved_connections >= self.max_connections {
            return Err(format!(
                "--reserved-connections {} must be below --max-connections {}",
                self.reserved_connections, self.max_connections
            ));
        }
        Ok(Listener {
            secret,
            open_data_plane: self.open_data_plane,
            max_connections: self.max_connections,
            reserved_connections: self.reserved_connections,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            frame_timeout: Duration::from_millis(self.frame_timeout_ms),
        })
    }
}
