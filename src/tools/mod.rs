//! kcat-style terminal tools: `shardq produce` sends stdin lines as records, `shardq consume`
//! prints records.

pub mod consume;
pub mod produce;

use anyhow::Result;
use shardq_protocol::ShardSpec;

/// `T` (every partition), `T:*`, `T:P3` or `T:3`.
pub fn parse_target(s: &str) -> Result<ShardSpec, String> {
    if !s.contains(':') {
        return format!("{s}:*").parse();
    }
    match s.rsplit_once(':') {
        Some((t, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{t}:P{p}").parse()
        }
        _ => s.parse(),
    }
}

/// A header given as `K=V`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("header {s:?} is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_headers_parse() {
        assert_eq!(parse_target("T"), Ok(ShardSpec::All("T".into())));
        assert_eq!(parse_target("T:*"), Ok(ShardSpec::All("T".into())));
        assert_eq!(
            parse_target("T:3"),
            Ok(ShardSpec::One(shardq_protocol::ShardId::new("T", 3)))
        );
        assert_eq!(parse_target("T:P3"), parse_target("T:3"));
        assert!(parse_target("T:0").is_err());
        assert!(parse_target("").is_err());
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_header("=x").is_err());
        assert!(parse_header("nothing").is_err());
    }
}
