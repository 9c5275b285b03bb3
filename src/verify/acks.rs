//! Parsing a producer's ack log (`producer_N.acked`, both the v2 ack-order format and the older
//! send-order one) into its acknowledged records in send order.

use std::path::Path;

use anyhow::{bail, Context, Result};
use shardq_protocol::ShardId;

use super::input::{read, split_shard};

/// One line of `producer_N.acked` (`runproduce --ack-log`), one per acknowledged record (a
/// record whose produce failed has no line): `T:P OFFSET RECORD MESSAGE` in ack order under the
/// `# shardq ack log v2` header line, where RECORD is the record's 1-based position in the input;
/// or, in logs without that header, `T:P OFFSET MESSAGE` in send order.
pub(super) struct Ack {
    pub(super) line: usize,
    pub(super) shard: ShardId,
    pub(super) offset: u64,
    pub(super) msg: String,
}

/// The ack log's records in send order (a v2 log is sorted by its RECORD field).
pub(super) fn parse_ack_log(path: &Path) -> Result<Vec<Ack>> {
    let mut out = Vec::new();
    let text = read(path)?;
    let v2 = text.starts_with("# shardq ack log v2");
    let mut numbered = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || (v2 && line.starts_with('#')) {
            continue;
        }
        let bad = || {
            format!(
                "{}:{}: not `T:P OFFSET {}MESSAGE`",
                path.display(),
                i + 1,
                if v2 { "RECORD " } else { "" }
            )
        };
        let (shard, rest) = split_shard(line).with_context(bad)?;
        let (offset, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let (record, msg) = if v2 {
            let (n, msg) = rest
                .trim_start()
                .split_once(char::is_whitespace)
                .unwrap_or((rest.trim_start(), ""));
            (Some(n.parse::<u64>().ok().with_context(bad)?), msg)
        } else {
            (None, rest)
        };
        let ack = Ack {
            line: i + 1,
            shard,
            offset: offset.parse().ok().with_context(bad)?,
            msg: msg.trim().to_string(),
        };
        match record {
            Some(n) => numbered.push((n, ack)),
            None => out.push(ack),
        }
    }
    if v2 {
        numbered.sort_by_key(|(n, _)| *n);
        if let Some(w) = numbered.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!(
                "{}:{}: record {} is acknowledged twice (also on line {})",
                path.display(),
                w[1].1.line,
                w[1].0,
                w[0].1.line
            );
        }
        out = numbered.into_iter().map(|(_, a)| a).collect();
    }
    Ok(out)
}
