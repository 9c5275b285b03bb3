//! The file protocol by which a `shardq up` cluster is asked for one more broker: a request file
//! `DATA/control/NONCE.req`, answered by `shardq up` in `NONCE.done` with `ID ADDR` (or
//! `error REASON`). Used by `shardq broker add --data DATA` and the router's HTTP API (a router
//! started by `shardq up` knows DATA from `--up-data`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shardq_protocol::ScalingDecision;

/// The file in DATA where the autoscaler of `shardq up` appends its decisions, one JSON object
/// a line (`time_ms`, `action`, `reason`, `brokers`, `broker`).
pub const AUTOSCALER_LOG: &str = "autoscaler.log";

/// The autoscaler's decisions in `data` (none if it never decided, or the file is unreadable),
/// oldest first; lines that are not JSON (a torn last line) are skipped.
pub fn autoscaler_decisions(data: &Path) -> Vec<ScalingDecision> {
    std::fs::read_to_string(data.join(AUTOSCALER_LOG))
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}
use tokio::time::Instant;

/// Asks the `shardq up` running on `data` to start one more broker; returns its id and address.
pub async fn request_broker(data: &Path) -> Result<(u32, String)> {
    let control = data.join("control");
    if !data.join("cluster.json").exists() || !control.is_dir() {
        bail!(
            "no `shardq up` cluster is running on {} (start one with `shardq up --data {}`)",
            data.display(),
            data.display()
        );
    }
    let nonce = format!(
        "add-broker-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let req = control.join(format!("{nonce}.req"));
    std::fs::write(&req, b"add").with_context(|| format!("cannot write {}", req.display()))?;
    let done = req.with_extension("done");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            let text = text.trim();
            if let Some(err) = text.strip_prefix("error ") {
                bail!("could not add a broker: {err}");
            }
            let (id, addr) = text
                .split_once(' ')
                .with_context(|| format!("unexpected answer {text:?}"))?;
            return Ok((
                id.parse().context("bad broker id in answer")?,
                addr.to_string(),
            ));
        }
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(&req);
            bail!(
                "the cluster on {} did not start a broker within 60 s",
                data.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
