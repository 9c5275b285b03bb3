//! Leader epoch -> start offset (placeholder until the model branch lands).
use std::collections::BTreeMap;

use shardq_protocol::Offset;

use super::LeaderEpoch;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: BTreeMap<LeaderEpoch, Offset>,
}

impl EpochCache {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn from_entries(it: impl IntoIterator<Item = (LeaderEpoch, Offset)>) -> Self {
        EpochCache {
            entries: it.into_iter().collect(),
        }
    }
    pub fn entries(&self) -> impl Iterator<Item = (LeaderEpoch, Offset)> + '_ {
        self.entries.iter().map(|(e, o)| (*e, *o))
    }
    pub fn assign(&mut self, epoch: LeaderEpoch, start: Offset) -> bool {
        if let Some((le, ls)) = self.latest() {
            if epoch <= le || start < ls {
                return false;
            }
            if start == ls {
                self.entries.remove(&le);
            }
        }
        self.entries.insert(epoch, start);
        true
    }
    pub fn latest(&self) -> Option<(LeaderEpoch, Offset)> {
        self.entries.iter().next_back().map(|(e, o)| (*e, *o))
    }
    pub fn epoch_at(&self, offset: Offset) -> Option<LeaderEpoch> {
        self.entries
            .iter()
            .rev()
            .find(|(_, s)| **s <= offset)
            .map(|(e, _)| *e)
    }
    pub fn end_offset_for(
        &self,
        epoch: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let (&found, _) = self.entries.range(..=epoch).next_back()?;
        let end = self
            .entries
            .range(found + 1..)
            .next()
            .map_or(log_end, |(_, s)| *s);
        Some((found, end))
    }
    pub fn truncate_from(&mut self, offset: Offset) {
        self.entries.retain(|_, s| *s < offset);
    }
}
