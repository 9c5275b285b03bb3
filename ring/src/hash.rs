//! Pluggable 64-bit hash functions used for ring tokens and shard keys.
//!
//! Every function here is deterministic across processes, platforms and releases: the ring's
//! placement must be reproducible by every router and by `shardq ring analyze`, so nothing is
//! seeded randomly (no `RandomState`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::RingError;

/// Fixed SipHash keys (the reference-implementation test keys `00 01 .. 0f`). They only need to be
/// the same everywhere; the ring is not a defence against hash flooding.
const SIP_K0: u64 = 0x0706_0504_0302_0100;
const SIP_K1: u64 = 0x0f0e_0d0c_0b0a_0908;

/// Which hash function places tokens and keys on the ring.
///
/// `Xxh3` is the default (fast, well mixed); the others exist so `ring analyze` can compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashFn {
    /// XXH3 64-bit, seed 0.
    #[default]
    Xxh3,
    /// FNV-1a, 64-bit.
    Fnv1a,
    /// SipHash-1-3 with the fixed keys `SIP_K0`/`SIP_K1`.
    Sip13,
    /// MurmurHash3 x64_128, seed 0, low 64 bits (`h1`).
    Murmur3,
}

impl HashFn {
    /// Canonical lowercase name, accepted back by `FromStr`.
    pub fn name(&self) -> &'static str {
        match self {
            HashFn::Xxh3 => "xxh3",
            HashFn::Fnv1a => "fnv1a",
            HashFn::Sip13 => "sip13",
            HashFn::Murmur3 => "murmur3",
        }
    }

    /// Hash `bytes` to a ring position.
    #[inline]
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        match self {
            HashFn::Xxh3 => xxhash_rust::xxh3::xxh3_64(bytes),
            HashFn::Fnv1a => fnv1a64(bytes),
            HashFn::Sip13 => siphasher::sip::SipHasher13::new_with_keys(SIP_K0, SIP_K1).hash(bytes),
            HashFn::Murmur3 => murmur3_x64_128(bytes, 0).0,
        }
    }

    /// Every supported function, default first.
    pub fn all() -> &'static [HashFn] {
        &[HashFn::Xxh3, HashFn::Fnv1a, HashFn::Sip13, HashFn::Murmur3]
    }
}

impl fmt::Display for HashFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashFn {
    type Err = RingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "xxh3" => Ok(HashFn::Xxh3),
            "fnv1a" | "fnv" | "fnv1a64" => Ok(HashFn::Fnv1a),
            "sip13" | "siphash" | "siphash13" => Ok(HashFn::Sip13),
            "murmur3" | "murmur" => Ok(HashFn::Murmur3),
            _ => Err(RingError::UnknownHash(s.to_string())),
        }
    }
}

/// FNV-1a 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// MurmurHash3 x64_128 (Austin Appleby's reference algorithm), returning `(h1, h2)`.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mut h1 = u64::from(seed);
    let mut h2 = u64::from(seed);

    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&block[..8]);
        hi.copy_from_slice(&block[8..]);
        let mut k1 = u64::from_le_bytes(lo);
        let mut k2 = u64::from_le_bytes(hi);

        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);

        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    let tail = blocks.remainder();
    let mut k1: u64 = 0;
    let mut k2: u64 = 0;
    for (j, &b) in tail.iter().enumerate() {
        if j >= 8 {
            k2 ^= u64::from(b) << ((j - 8) * 8);
        } else {
            k1 ^= u64::from(b) << (j * 8);
        }
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }

    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(HashFn::Fnv1a.hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(HashFn::Fnv1a.hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(HashFn::Xxh3.hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(murmur3_x64_128(b"", 0), (0, 0));
        // mmh3.hash64("hello") == (-3758069500696749310, 6565844092913065241)
        assert_eq!(
            murmur3_x64_128(b"hello", 0),
            (0xcbd8_a7b3_41bd_9b02, 0x5b1e_906a_48ae_1d19)
        );
        // SipHash-1-3 must be stable; guard against accidental key changes.
        assert_eq!(HashFn::Sip13.hash(b"x"), HashFn::Sip13.hash(b"x"));
        assert_ne!(HashFn::Sip13.hash(b"x"), HashFn::Sip13.hash(b"y"));
    }

    #[test]
    fn murmur_long_input_uses_blocks_and_tail() {
        // 16-byte block plus a 9-byte tail exercises both tail lanes; just check stability.
        let data = b"0123456789abcdef012345678";
        assert_eq!(murmur3_x64_128(data, 0), murmur3_x64_128(data, 0));
        assert_ne!(murmur3_x64_128(data, 0), murmur3_x64_128(&data[..24], 0));
    }

    #[test]
    fn names_roundtrip() {
        for h in HashFn::all() {
            assert_eq!(h.name().parse::<HashFn>().unwrap(), *h);
            assert_eq!(h.to_string(), h.name());
        }
        assert_eq!("siphash".parse::<HashFn>().unwrap(), HashFn::Sip13);
        assert_eq!("XXH3".parse::<HashFn>().unwrap(), HashFn::Xxh3);
        let err = "md5".parse::<HashFn>().unwrap_err().to_string();
        assert!(
            err.contains("md5") && err.contains("xxh3") && err.contains("murmur3"),
            "{err}"
        );
    }
}
