//! The verifier's model of a run: interned message texts, each topic's records (fixed, `*` or
//! failed), a consumer's receipts per shard, and which partitions a subscription covers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use shardq_protocol::{ShardId, ShardSpec};

use super::report::show;

/// A consumer's lines per shard: (text, line number in consumer_N.txt), in the order consumed.
pub(super) type Received = BTreeMap<ShardId, Vec<(u32, usize)>>;

/// Message texts, interned: records and received lines compare by id.
#[derive(Default)]
pub(super) struct Texts {
    ids: HashMap<String, u32>,
    pub(super) list: Vec<String>,
}

impl Texts {
    pub(super) fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.list.len() as u32;
        self.ids.insert(s.to_string(), id);
        self.list.push(s.to_string());
        id
    }

    pub(super) fn show(&self, id: u32) -> String {
        show(&self.list[id as usize])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Required on its shard (an explicit partition, or a `*` an ack log resolved).
    Fixed,
    /// Sent to `T:*` without an ack log: on one partition of the topic, nobody knows which.
    Star,
    /// Left out of its producer's ack log: optional, at most once, in no particular order.
    Failed,
}

#[derive(Clone, Debug)]
pub(super) struct Item {
    pub(super) producer: u32,
    pub(super) line: usize,
    pub(super) text: u32,
    pub(super) kind: Kind,
    /// `None` for `Star` and for a `Failed` record sent to `T:*`.
    pub(super) partition: Option<u32>,
    /// From the ack log.
    pub(super) offset: Option<u64>,
}

/// A topic's records (ids index `items`) and every partition anyone named.
#[derive(Default)]
pub(super) struct Topic {
    pub(super) partitions: BTreeSet<u32>,
    pub(super) items: Vec<Item>,
    /// Producers whose records here have ack-log offsets.
    pub(super) acked: BTreeSet<u32>,
}

impl Topic {
    pub(super) fn has_star(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.partition.is_none() && i.kind != Kind::Fixed)
    }
}

/// The covered partitions of a topic for a subscription, and whether it reads the whole topic.
pub(super) fn coverage(name: &str, topic: &Topic, subs: &[ShardSpec]) -> (Vec<u32>, bool) {
    let covered: Vec<u32> = topic
        .partitions
        .iter()
        .copied()
        .filter(|&p| subs.iter().any(|s| s.covers(&ShardId::new(name, p))))
        .collect();
    let whole = !covered.is_empty()
        && (covered.len() == topic.partitions.len()
            || subs
                .iter()
                .any(|s| matches!(s, ShardSpec::All(t) if t == name)));
    (covered, whole)
}
