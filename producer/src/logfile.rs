//! The `producer_N.txt` input of `runproduce`: one record per line,
//! `<time> <message> <partition|*> <topic>` separated by any whitespace, blank lines skipped.
//! Parsing checks the syntax, the encoding (UTF-8) and the message size; [`validate`] checks every
//! record against the routing table and the `--topics` the producer was started with, so a bad file
//! is refused before anything is sent.

use std::fmt;

use shardq_protocol::{parse_partition, validate_topic, RoutingTable, ShardId, ShardSpec};

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// 1-based line number in the file.
    pub line: usize,
    pub time: String,
    pub message: String,
    /// `T:Pn`, or `T:*` for a `*` partition (the partitioner picks).
    pub target: ShardSpec,
}

/// Why one line of the file is refused; displays as `producer_N.txt:LINE: why`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// Parses the whole file, collecting every bad line rather than stopping at the first. No size
/// limit: see [`parse_bytes`].
pub fn parse(file: &str, text: &str) -> (Vec<LogRecord>, Vec<LineError>) {
    parse_bytes(file, text.as_bytes(), None)
}

/// Parses the raw bytes of the file (`\n` or `\r\n` line ends), collecting every bad line: a
/// line that is not UTF-8, has the wrong shape, or (with `max_message_bytes`) whose message is
/// larger than the limit.
pub fn parse_bytes(
    file: &str,
    data: &[u8],
    max_message_bytes: Option<usize>,
) -> (Vec<LogRecord>, Vec<LineError>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let mut raw_lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    if raw_lines.last().is_some_and(|l| l.is_empty()) {
        raw_lines.pop();
    }
    for (i, bytes) in raw_lines.into_iter().enumerate() {
        let line = i + 1;
        let err = |reason: String| LineError {
            file: file.to_string(),
            line,
            reason,
        };
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let raw = match std::str::from_utf8(bytes) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(err(format!(
                    "not valid UTF-8 (at byte {} of the line)",
                    e.valid_up_to() + 1
                )));
                continue;
            }
        };
        let fields: Vec<&str> = raw.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [time, message, partition, topic] = fields[..] else {
            errors.push(err(format!(
                "expected 4 fields `<time> <message> <partition|*> <topic>`, found {} \
                 (fields are separated by whitespace, so a message cannot contain spaces; \
                 `shardq produce` sends whole lines)",
                fields.len()
            )));
            continue;
        };
        if let Some(max) = max_message_bytes.filter(|max| message.len() > *max) {
            errors.push(err(format!(
                "message of {} bytes exceeds --max-record-bytes {max}",
                message.len()
            )));
            continue;
        }
        if let Err(e) = validate_topic(topic) {
            errors.push(err(e));
            continue;
        }
        let target = if partition == "*" {
            ShardSpec::All(topic.to_string())
        } else {
            match parse_partition(partition) {
                Ok(p) => ShardSpec::One(ShardId::new(topic, p)),
                Err(e) => {
                    errors.push(err(e));
                    continue;
                }
            }
        };
        records.push(LogRecord {
            line,
            time: time.to_string(),
            message: message.to_string(),
            target,
        });
    }
    (records, errors)
}

/// Checks the `--topics` list itself against the routing table.
pub fn validate_topics(table: &RoutingTable, topics: &[ShardSpec]) -> Vec<String> {
    topics
        .iter()
        .filter_map(|spec| {
            check_exists(table, spec)
                .err()
                .map(|why| format!("--topics {spec}: {why}"))
        })
        .collect()
}

/// Checks each record: its topic and partition exist, and `--topics` covers it (a `*` record
/// needs every partition of its topic covered, since the partitioner may pick any).
pub fn validate(
    file: &str,
    records: &[LogRecord],
    table: &RoutingTable,
    allowed: &[ShardSpec],
) -> Vec<LineError> {
    records
        .iter()
        .filter_map(|r| {
            let reason = check_exists(table, &r.target)
                .and_then(|partitions| check_covered(&r.target, partitions, allowed))
                .err()?;
            Some(LineError {
                file: file.to_string(),
                line: r.line,
                reason,
            })
        })
        .collect()
}

/// The topic's partition count if `spec` names an existing topic (and partition).
fn check_exists(table: &RoutingTable, spec: &ShardSpec) -> Result<u32, String> {
    let topic = spec.topic();
    let info = table.topic(topic).ok_or_else(|| {
        format!(
            "unknown topic {topic:?} (create it with `shardq topic create {topic} --partitions N`)"
        )
    })?;
    if let ShardSpec::One(id) = spec {
        if id.partition > info.partitions {
            return Err(format!(
                "unknown partition P{} of {topic}: it has partitions P1..P{}",
                id.partition, info.partitions
            ));
        }
    }
    Ok(info.partitions)
}

fn check_covered(spec: &ShardSpec, partitions: u32, allowed: &[ShardSpec]) -> Result<(), String> {
    let listed = || {
        allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    match spec {
        ShardSpec::One(id) => {
            if allowed.iter().any(|a| a.covers(id)) {
                Ok(())
            } else {
                Err(format!("{id} is not in --topics ({})", listed()))
            }
        }
        ShardSpec::All(topic) => {
            let uncovered: Vec<String> = (1..=partitions)
                .map(|p| ShardId::new(topic.as_str(), p))
                .filter(|id| !allowed.iter().any(|a| a.covers(id)))
                .map(|id| id.to_string())
                .collect();
            if uncovered.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "`*` may pick any partition of {topic}, but --topics ({}) does not cover {}",
                    listed(),
                    uncovered.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardq_protocol::{ShardRoute, TopicInfo};

    fn table() -> RoutingTable {
        let topics = [("T1", 2), ("T2", 3)];
        RoutingTable {
            epoch: 1,
            topics: topics
                .iter()
                .map(|(n, p)| TopicInfo {
                    name: n.to_string(),
                    partitions: *p,
                    replication_factor: 1,
                    min_insync: 1,
                    retention: Default::default(),
                })
                .collect(),
            shards: topics
                .iter()
                .flat_map(|(n, p)| {
                    (1..=*p).map(move |i| ShardRoute {
                        shard: ShardId::new(*n, i),
                        owner: None,
                        moving: false,
                        leader_epoch: 0,
                        replicas: vec![],
                        isr: vec![],
                    })
                })
                .collect(),
        }
    }

    fn specs(s: &[&str]) -> Vec<ShardSpec> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn parses_tabs_spaces_blank_lines_and_stars() {
        let text = "21:52:23\tMSG1\t\tP1\t\tT1\n\n   \n21:52:24   MSG2  *   T2\n1 MSG3 2 T1\n";
        let (recs, errs) = parse("producer_1.txt", text);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            recs,
            vec![
                LogRecord {
                    line: 1,
                    time: "21:52:23".into(),
                    message: "MSG1".into(),
                    target: ShardSpec::One(ShardId::new("T1", 1)),
                },
                LogRecord {
                    line: 4,
                    time: "21:52:24".into(),
                    message: "MSG2".into(),
                    target: ShardSpec::All("T2".into()),
                },
                LogRecord {
                    line: 5,
                    time: "1".into(),
                    message: "MSG3".into(),
                    target: ShardSpec::One(ShardId::new("T1", 2)),
                },
            ]
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let text = "1 A P1\n1 B P1 T1 extra\n1 C Px T1\n1 D P0 T1\n1 E P1 T/1\n1 F P1 T1\n";
        let (recs, errs) = parse("producer_7.txt", text);
        assert_eq!(recs.len(), 1);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            errs.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(
            shown[0].starts_with("producer_7.txt:1: expected 4 fields"),
            "{}",
            shown[0]
        );
        assert!(shown[1].contains("found 5"), "{}", shown[1]);
        assert!(
            shown[1].contains("a message cannot contain spaces"),
            "{}",
            shown[1]
        );
        assert!(
            shown[2].starts_with("producer_7.txt:3: partition \"Px\""),
            "{}",
            shown[2]
        );
        assert!(shown[3].contains("numbered from 1"), "{}", shown[3]);
        assert!(shown[4].contains("'/'"), "{}", shown[4]);
    }

    #[test]
    fn bad_utf8_and_oversized_messages_name_their_line() {
        let mut data = b"1 A P1 T1\r\n1 B\xff P1 T1\n".to_vec();
        data.extend_from_slice(format!("1 {} P1 T1\n", "x".repeat(101)).as_bytes());
        data.extend_from_slice(format!("1 {} P1 T1\n\n", "y".repeat(100)).as_bytes());
        let (recs, errs) = parse_bytes("producer_9.txt", &data, Some(100));
        assert_eq!(recs.iter().map(|r| r.line).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(recs[0].message, "A");
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "producer_9.txt:2: not valid UTF-8 (at byte 4 of the line)",
                "producer_9.txt:3: message of 101 bytes exceeds --max-record-bytes 100",
            ]
        );
        // Without a limit, size is not checked.
        let (recs, errs) = parse_bytes("p", &data[..data.len() - 1], None);
        assert_eq!((recs.len(), errs.len()), (3, 1));
    }

    #[test]
    fn records_are_checked_against_the_table_and_topics() {
        let text = "1 A P1 T1\n1 B P3 T1\n1 C P1 T9\n1 D P2 T2\n1 E * T1\n1 F * T2\n";
        let (recs, errs) = parse("producer_2.txt", text);
        assert!(errs.is_empty());
        let allowed = specs(&["T1:*", "T2:P1"]);
        let errs = validate("producer_2.txt", &recs, &table(), &allowed);
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            errs.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3, 4, 6],
            "{shown:?}"
        );
        assert!(
            shown[0].contains("unknown partition P3 of T1"),
            "{}",
            shown[0]
        );
        assert!(shown[1].contains("unknown topic \"T9\""), "{}", shown[1]);
        assert!(
            shown[2].contains("T2:P2 is not in --topics (T1:* T2:P1)"),
            "{}",
            shown[2]
        );
        assert!(
            shown[3].contains("does not cover T2:P2, T2:P3"),
            "{}",
            shown[3]
        );
        // A `*` record is fine when every partition is listed one by one.
        let allowed = specs(&["T1:P1", "T1:P2"]);
        let (recs, _) = parse("p", "1 E * T1\n");
        assert!(validate("p", &recs, &table(), &allowed).is_empty());
    }

    #[test]
    fn the_topics_list_itself_is_checked() {
        let errs = validate_topics(&table(), &specs(&["T1:*", "T2:P4", "X:*"]));
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].starts_with("--topics T2:P4: unknown partition"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].starts_with("--topics X:*: unknown topic"),
            "{}",
            errs[1]
        );
    }
}
