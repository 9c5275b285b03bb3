//! The verifier's findings: per-consumer and overall reports, their PASS/FAIL rendering, and how
//! a message is shown in them.

use std::fmt::Write as _;

/// One consumer's findings.
#[derive(Clone, Debug, Default)]
pub struct ConsumerReport {
    pub id: u32,
    pub expected: usize,
    pub received: usize,
    pub missing: Vec<String>,
    pub duplicates: Vec<String>,
    pub unexpected: Vec<String>,
    pub out_of_order: Vec<String>,
    /// Shards whose order could not be decided within the search budget (repeated texts).
    pub undecided: Vec<String>,
}

impl ConsumerReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.unexpected.is_empty()
            && self.out_of_order.is_empty()
            && self.undecided.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub produced: usize,
    /// Records sent to `T:*` whose partition no ack log resolved (checked per topic).
    pub unresolved: usize,
    /// Of those, records the consumers' receipts place on one partition unambiguously (then
    /// required there like any record sent to that partition).
    pub placed: usize,
    /// Records their producer's ack log shows were not acknowledged (optional, at most once).
    pub failed: usize,
    pub consumers: Vec<ConsumerReport>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.consumers.iter().all(ConsumerReport::ok)
    }

    /// Human-readable summary ending in PASS or FAIL.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "produced {} records ({} sent to T:* without an ack log",
            self.produced, self.unresolved
        );
        if self.placed > 0 {
            let _ = write!(s, ", {} of them placed by receipts", self.placed);
        }
        if self.failed > 0 {
            let _ = write!(s, ", {} not acknowledged", self.failed);
        }
        let _ = writeln!(s, ")");
        for c in &self.consumers {
            let _ = write!(
                s,
                "consumer {}: expected {}, received {}, missing {}, duplicates {}, unexpected {}, out of order {}",
                c.id,
                c.expected,
                c.received,
                c.missing.len(),
                c.duplicates.len(),
                c.unexpected.len(),
                c.out_of_order.len()
            );
            if !c.undecided.is_empty() {
                let _ = write!(s, ", undecided {}", c.undecided.len());
            }
            let _ = writeln!(s);
            for (what, list) in [
                ("missing", &c.missing),
                ("duplicate", &c.duplicates),
                ("unexpected", &c.unexpected),
                ("out of order", &c.out_of_order),
                ("undecided", &c.undecided),
            ] {
                for item in list.iter().take(10) {
                    let _ = writeln!(s, "  {what}: {item}");
                }
                if list.len() > 10 {
                    let _ = writeln!(s, "  ... and {} more {what}", list.len() - 10);
                }
            }
        }
        let undecided_only = self.consumers.iter().all(|c| {
            c.missing.is_empty()
                && c.duplicates.is_empty()
                && c.unexpected.is_empty()
                && c.out_of_order.is_empty()
        });
        let verdict = if self.passed() {
            "PASS"
        } else if undecided_only {
            "FAIL (undecided: too many ways to match repeated messages; nothing definitely wrong)"
        } else {
            "FAIL"
        };
        let _ = writeln!(s, "{verdict}");
        s
    }
}

/// Characters of a message shown in a report before it is cut.
const SHOWN_CHARS: usize = 80;

/// A message as reports show it: up to [`SHOWN_CHARS`] characters, then `… (N bytes)`.
pub fn show(msg: &str) -> String {
    match msg.char_indices().nth(SHOWN_CHARS) {
        None => msg.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &msg[..cut], msg.len()),
    }
}
