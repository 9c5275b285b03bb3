//! Unit tests of the verifier, by concern, and the helpers they share: writing a run's files,
//! building a spec, and a reproducible random stream.

mod checks;
mod cluster;
mod input;
mod order;
mod placement;
mod property;

use std::path::Path;

use super::VerifySpec;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn spec(dir: &Path, consumers: &[(u32, &str)]) -> VerifySpec {
    VerifySpec {
        dir: dir.to_path_buf(),
        producers: vec![],
        consumers: consumers
            .iter()
            .map(|(id, subs)| (*id, subs.split(',').map(|s| s.parse().unwrap()).collect()))
            .collect(),
    }
}

/// xorshift64*: a reproducible stream for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
