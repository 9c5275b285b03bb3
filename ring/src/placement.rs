//! Balanced placement of leaders and replica sets (bounded mode).
//!
//! # Algorithm
//!
//! The layout for a member set is built by adding the members (those with weight > 0) one at a
//! time in ascending id order, starting from the lowest id holding everything. Each addition
//! only *takes*: the joining member `x` takes leaderships (and, for replicas, replica slots) from
//! the members already placed, and nothing moves between those. For leaders, in order:
//!
//! 1. what it must take so that no older member stays above its new cap (for each such member,
//!    the shards it holds that `x` ranks best, see below);
//! 2. then shards by preference — first those whose ring walk reaches `x` before their current
//!    holder (the shards a plain ring would hand to `x`), nearest to `x`'s tokens first, then the
//!    nearest others — as long as the giver stays at or above its new floor, until `x` holds as
//!    many as it prefers, clamped to its own `[floor, cap]`.
//!
//! For replicas `x` enters every set it now leads and then sets by the same two passes (where
//! the walk reaches `x` before the farthest follower), one member leaving each set it enters
//! (the farthest follower that may give). If that greedy choice leaves someone out of bounds,
//! [`Placer::rechoose`] searches the other choices of the same kind (which sets `x` enters,
//! who leaves) exactly, by augmenting paths.
//!
//! Bounds are recomputed for every prefix: with `S` shards, `r` copies and total weight `W`, a
//! member of weight `w` holds between `floor(S*r*w/W)` and `ceil((1+eps)*S*r*w/W)` (r = 1 for
//! leaders). A member whose share would exceed one copy of every shard is capped at `S` and the
//! rest is shared among the others by weight (only possible for r >= 2 with uneven weights). As
//! the prefix grows both bounds of every older member can only fall, so taking is always enough
//! to stay above the floors; it is not always enough to bring every older member under its new
//! cap (see [`Ring::place`](crate::Ring::place) for the exact condition), and then a repair pass
//! moves the excess between older members too.
//!
//! Consequences: the result is a deterministic function of the member set and the shard set;
//! every member's count is within its bounds (for replicas: unless the fixed leaders make that
//! impossible); and because the layout for `M + {x}` with `x` larger than every id in `M` *is*
//! the layout for `M` followed by the step adding `x`, such a join (and the reverse leave of the
//! largest id) moves leaders and replicas only to (from) `x`, except in the repair cases. Joins
//! or leaves of other ids replay every later step and can move shards between other members
//! too: no deterministic rule with floors can avoid that for every member set (the proof is in
//! the crate tests `tests/properties.rs`, which also measure how often it happens).

use std::cmp::Reverse;

use crate::{BrokerId, Ring};

/// Per-member `(floor, cap)` for `shards` shards with `copies` copies each over members with the
/// given weights (all > 0), bounded-load slack `eps` (negative or NaN = 0).
///
/// Water-filling: a member whose proportional share `shards*copies*w/W` would reach `shards` is
/// pinned at `shards` (one copy of every shard; it cannot hold two) and the rest is shared among
/// the others. `copies` is capped at the number of members.
pub(crate) fn bounds(
    weights: &[u64],
    shards: usize,
    copies: usize,
    eps: f64,
) -> Vec<(usize, usize)> {
    let n = weights.len();
    let mut out = vec![(0usize, 0usize); n];
    if n == 0 {
        return out;
    }
    let eps = if eps.is_nan() || eps < 0.0 { 0.0 } else { eps };
    let copies = copies.min(n);
    let s = shards as u128;
    let mut rest: u128 = s * copies as u128;
    let mut rest_w: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (Reverse(weights[i]), i));
    let mut pinned = vec![false; n];
    for &i in &order {
        let w = u128::from(weights[i]);
        if rest_w == 0 || rest * w < s * rest_w {
            break;
        }
        out[i] = (shards, shards);
        pinned[i] = true;
        rest -= s.min(rest);
        rest_w -= w;
    }
    for i in 0..n {
        if pinned[i] || rest_w == 0 {
            continue;
        }
        let w = u128::from(weights[i]);
        let lo = usize::try_from(rest * w / rest_w).unwrap_or(usize::MAX);
        // Same float expression (and the same 1e-12 shave) as `Ring::capacities`, so for leaders
        // the caps are identical to the bounded-load caps.
        let x = (1.0 + eps) * (rest as f64) * (weights[i] as f64) / (rest_w as f64);
        let hi = if x.is_infinite() {
            shards
        } else {
            (x - x * 1e-12).ceil() as usize
        };
        out[i] = (lo.min(shards), hi.max(lo).min(shards));
    }
    out
}

/// A leader (index into the placer's members) per shard and, when replicas were asked for, the
/// followers of each shard (unordered).
pub(crate) struct Layout {
    pub leader: Vec<usize>,
    pub followers: Vec<Vec<usize>>,
}

/// The inputs of one placement: members with weight > 0 in id order with their tokens, and the
/// distinct shards in `(hash, name)` order.
pub(crate) struct Placer<'a> {
    eps: f64,
    pub ids: Vec<BrokerId>,
    weights: Vec<u64>,
    /// Each member's tokens, ascending.
    tokens: Vec<Vec<u64>>,
    hashes: Vec<u64>,
    pub names: Vec<&'a str>,
}

/// A shard's view of a member: clockwise distance from the shard's hash to the member's first
/// token, then the member id — exactly the order of the ring walk (ties at one token position go
/// to the lower id, as in [`Ring::owner`]).
type Rank = (u64, BrokerId);

impl<'a> Placer<'a> {
    pub fn new<S: AsRef<str>>(ring: &Ring, shards: &'a [S], eps: f64) -> Placer<'a> {
        let mut slot_to_idx = vec![usize::MAX; ring.members.len()];
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        for (slot, m) in ring.members.iter().enumerate() {
            if ring.slot_active(slot) {
                slot_to_idx[slot] = ids.len();
                ids.push(m.id);
                weights.push(u64::from(m.weight));
            }
        }
        let mut tokens = vec![Vec::new(); ids.len()];
        for (&t, &slot) in ring.tokens.iter().zip(&ring.slots) {
            let idx = slot_to_idx[slot as usize];
            if idx != usize::MAX {
                tokens[idx].push(t);
            }
        }
        let mut items: Vec<(u64, &'a str)> = shards
            .iter()
            .map(|s| (ring.key_hash(s.as_ref()), s.as_ref()))
            .collect();
        items.sort_unstable();
        items.dedup();
        let (hashes, names) = items.into_iter().unzip();
        Placer {
            eps,
            ids,
            weights,
            tokens,
            hashes,
            names,
        }
    }

    fn rank(&self, s: usize, m: usize) -> Rank {
        let t = &self.tokens[m];
        let h = self.hashes[s];
        let i = t.partition_point(|&x| x < h);
        let tok = if i == t.len() { t[0] } else { t[i] };
        (tok.wrapping_sub(h), self.ids[m])
    }

    /// Build the layout; `copies` >= 2 also places followers (`min(copies, members)` replicas per
    /// shard in total). Needs at least one member.
    pub fn run(&self, copies: usize) -> Layout {
        let n = self.ids.len();
        let s_count = self.hashes.len();
        assert!(n > 0, "Placer::run needs a member");
        let with_followers = copies >= 2;
        let mut leader = vec![0usize; s_count];
        // Rank of each shard's current leader, kept so a step costs one lookup per shard.
        let mut leader_rank: Vec<Rank> = (0..s_count).map(|s| self.rank(s, 0)).collect();
        let mut leads = vec![0usize; n];
        leads[0] = s_count;
        let mut followers: Vec<Vec<usize>> =
            vec![Vec::new(); if with_followers { s_count } else { 0 }];
        let mut held = vec![0usize; n];
        held[0] = s_count;

        for x in 1..n {
            let x_rank: Vec<Rank> = (0..s_count).map(|s| self.rank(s, x)).collect();
            let changes = self.leader_step(x, &x_rank, &mut leader, &mut leader_rank, &mut leads);
            if !with_followers {
                continue;
            }
            if x < copies {
                // The prefix has at most `copies` members: every shard gains `x`, and a new
                // leader was already in the set (it swaps places with the old one).
                for fs in followers.iter_mut() {
                    fs.push(x);
                }
                for &(s, old, new) in &changes {
                    if let Some(f) = followers[s].iter_mut().find(|f| **f == new) {
                        *f = old;
                    }
                }
                held[x] = s_count;
            } else {
                self.replica_step(
                    x,
                    copies,
                    &x_rank,
                    &leader,
                    &changes,
                    &mut followers,
                    &mut held,
                );
            }
        }
        Layout { leader, followers }
    }

    /// Member `x` joins members `0..x`: it takes leaderships only (unless the repair case moves
    /// some between older members too). Returns every change as `(shard, old, new)` leader.
    fn leader_step(
        &self,
        x: usize,
        x_rank: &[Rank],
        leader: &mut [usize],
        leader_rank: &mut [Rank],
        leads: &mut [usize],
    ) -> Vec<(usize, usize, usize)> {
        let s_count = leader.len();
        let b = bounds(&self.weights[..=x], s_count, 1, self.eps);
        let (lo_x, hi_x) = b[x];
        let mut must: Vec<usize> = (0..x).map(|m| leads[m].saturating_sub(b[m].1)).collect();
        let mut can: Vec<usize> = (0..x).map(|m| leads[m].saturating_sub(b[m].0)).collect();

        // Preference of `x`: shards whose walk reaches `x` before their leader first, then by
        // closeness to `x`, then ring order.
        let mut order: Vec<(bool, u64, usize)> = (0..s_count)
            .map(|s| (x_rank[s] >= leader_rank[s], x_rank[s].0, s))
            .collect();
        order.sort_unstable();
        let wanted = order.iter().filter(|o| !o.0).count();
        let target = wanted.clamp(lo_x, hi_x);

        let mut taken = vec![false; s_count];
        let mut count = 0usize;
        // 1. Older members above their new cap give first.
        for &(_, _, s) in &order {
            if count >= hi_x {
                break;
            }
            let g = leader[s];
            if must[g] > 0 {
                must[g] -= 1;
                can[g] -= 1;
                taken[s] = true;
                count += 1;
            }
        }
        // 2. Then by preference while the giver stays at or above its floor.
        for &(_, _, s) in &order {
            if count >= target {
                break;
            }
            let g = leader[s];
            if !taken[s] && can[g] > 0 {
                can[g] -= 1;
                taken[s] = true;
                count += 1;
            }
        }
        let mut changes = Vec::with_capacity(count);
        for &(_, _, s) in &order {
            if taken[s] {
                changes.push((s, leader[s], x));
                leads[leader[s]] -= 1;
                leader[s] = x;
                leader_rank[s] = x_rank[s];
            }
        }
        leads[x] = count;

        // Repair: only when the older members' excess over their new caps is more than `x` may
        // hold. Move the excess to the nearest older member (in each shard's walk) with room.
        for g in 0..x {
            while leads[g] > b[g].1 {
                let Some((_, s, to)) = (0..s_count)
                    .filter(|&s| leader[s] == g)
                    .flat_map(|s| {
                        (0..x)
                            .filter(|&c| c != g && leads[c] < b[c].1)
                            .map(move |c| (s, c))
                    })
                    .map(|(s, c)| (self.rank(s, c), s, c))
                    .min()
                else {
                    break;
                };
                changes.push((s, g, to));
                leads[g] -= 1;
                leads[to] += 1;
                leader[s] = to;
                leader_rank[s] = self.rank(s, to);
            }
        }
        changes
    }

    /// Member `x` joins members `0..x` (already `copies` or more of them, so every replica set
    /// is full): `x` enters replica sets and one member leaves each. Forced for the shards `x`
    /// now leads; then as for leaders: what the older members must give, then by preference.
    #[allow(clippy::too_many_arguments)]
    fn replica_step(
        &self,
        x: usize,
        copies: usize,
        x_rank: &[Rank],
        leader: &[usize],
        changes: &[(usize, usize, usize)],
        followers: &mut [Vec<usize>],
        held: &mut [usize],
    ) {
        let s_count = leader.len();
        let b = bounds(&self.weights[..=x], s_count, copies, self.eps);
        let (lo_x, hi_x) = b[x];
        let over = |held: &[usize], m: usize| held[m] > b[m].1;
        let spare = |held: &[usize], m: usize| held[m] > b[m].0;
        // The farthest (in shard `s`'s walk) of the followers `fs` that satisfy `ok`.
        let farthest = |s: usize, fs: &[usize], ok: &dyn Fn(usize) -> bool| {
            fs.iter()
                .enumerate()
                .filter(|(_, &m)| ok(m))
                .max_by_key(|(_, &m)| self.rank(s, m))
                .map(|(i, _)| i)
        };
        let mut has_x = vec![false; s_count];
        // The old member that left each shard `x` entered.
        let mut gone: Vec<Option<usize>> = vec![None; s_count];

        // 1. Leader changes. A new leader already in the set swaps places with the old one.
        //    Otherwise it enters (x always does), the old leader joins the followers, and one of
        //    them leaves: the farthest of those above their cap, else of those above their
        //    floor, else (repair case) of all.
        for &(s, old, new) in changes {
            if new == x {
                has_x[s] = true;
            }
            if let Some(f) = followers[s].iter_mut().find(|f| **f == new) {
                *f = old;
                continue;
            }
            followers[s].push(old);
            held[new] += 1;
            let fs = &followers[s];
            let i = farthest(s, fs, &|m| over(held, m))
                .or_else(|| farthest(s, fs, &|m| spare(held, m)))
                .or_else(|| farthest(s, fs, &|_| true))
                .unwrap_or(0);
            let out = followers[s].swap_remove(i);
            held[out] -= 1;
            if new == x {
                gone[s] = Some(out);
            }
        }

        // Other shards: `x` is wanted where the walk reaches it before the farthest follower.
        let mut order: Vec<(bool, u64, usize)> = (0..s_count)
            .filter(|&s| !has_x[s])
            .map(|s| {
                let far = followers[s].iter().map(|&f| self.rank(s, f)).max();
                (far.is_none_or(|f| x_rank[s] >= f), x_rank[s].0, s)
            })
            .collect();
        order.sort_unstable();
        let wanted = held[x] + order.iter().filter(|o| !o.0).count();
        let target = wanted.clamp(lo_x, hi_x);

        // 2. Older members above their new cap give first; 3. then by preference while the
        //    giver stays at or above its floor.
        for pass in 0..2 {
            for &(_, _, s) in &order {
                if held[x] >= if pass == 0 { hi_x } else { target } {
                    break;
                }
                if has_x[s] {
                    continue;
                }
                let i = if pass == 0 {
                    farthest(s, &followers[s], &|m| over(held, m))
                } else {
                    farthest(s, &followers[s], &|m| spare(held, m))
                };
                if let Some(i) = i {
                    let out = std::mem::replace(&mut followers[s][i], x);
                    held[out] -= 1;
                    held[x] += 1;
                    has_x[s] = true;
                    gone[s] = Some(out);
                }
            }
        }
        // 4. If the greedy choice of who leaves left an older member outside its bounds, choose
        //    differently among the shards `x` entered (still only `x` is added anywhere) ...
        self.rechoose(x, &b, leader, followers, held, &mut has_x, &mut gone);
        // ... and only if that cannot help either, swap followers between older members.
        self.repair_replicas(x, &b, leader, followers, held);
    }

    /// Bring members within `b` by changing the step's choices only — which shards `x` entered
    /// (besides those it leads) and which member left each — so that the layout still differs
    /// from the one before the step only by `x` replacing one member per shard it is in.
    ///
    /// A unit moves from giver to receiver along one of: `a` leaves a shard `x` is in and that
    /// shard's leaver comes back; `x` leaves a shard it does not lead and its leaver comes back;
    /// `x` enters a shard and follower `a` leaves. Chains of these (augmenting paths, found by
    /// breadth-first search) fix one unit at a time: if any such layout meets the bounds, this
    /// finds one.
    #[allow(clippy::too_many_arguments)]
    fn rechoose(
        &self,
        x: usize,
        b: &[(usize, usize)],
        leader: &[usize],
        followers: &mut [Vec<usize>],
        held: &mut [usize],
        has_x: &mut [bool],
        gone: &mut [Option<usize>],
    ) {
        let members = x + 1;
        // Moves out of giver `a`: (receiver, shard).
        let out_of =
            |a: usize, followers: &[Vec<usize>], has_x: &[bool], gone: &[Option<usize>]| {
                let mut v = Vec::new();
                for s in 0..leader.len() {
                    if has_x[s] {
                        let back = gone[s].expect("a shard x entered has a leaver");
                        if (a == x && leader[s] != x) || (a != x && followers[s].contains(&a)) {
                            v.push((back, s));
                        }
                    } else if a != x && followers[s].contains(&a) {
                        v.push((x, s));
                    }
                }
                v
            };
        // Moves into receiver `c`: (giver, shard).
        let into = |c: usize, followers: &[Vec<usize>], has_x: &[bool], gone: &[Option<usize>]| {
            let mut v = Vec::new();
            for s in 0..leader.len() {
                if c == x {
                    if !has_x[s] {
                        v.extend(followers[s].iter().map(|&a| (a, s)));
                    }
                } else if has_x[s] && gone[s] == Some(c) {
                    v.extend(followers[s].iter().filter(|&&a| a != x).map(|&a| (a, s)));
                    if leader[s] != x {
                        v.push((x, s));
                    }
                }
            }
            v
        };
        'fix: loop {
            for m in 0..members {
                let gaining = if held[m] < b[m].0 {
                    true
                } else if held[m] > b[m].1 {
                    false
                } else {
                    continue;
                };
                // prev[e] = (next member towards `m`, shard of the move between them)
                let mut prev: Vec<Option<(usize, usize)>> = vec![None; members];
                let mut seen = vec![false; members];
                seen[m] = true;
                let mut queue = std::collections::VecDeque::from([m]);
                let mut found = None;
                'bfs: while let Some(a) = queue.pop_front() {
                    let next = if gaining {
                        into(a, followers, has_x, gone)
                    } else {
                        out_of(a, followers, has_x, gone)
                    };
                    for (e, s) in next {
                        if seen[e] {
                            continue;
                        }
                        seen[e] = true;
                        prev[e] = Some((a, s));
                        let end = if gaining {
                            held[e] > b[e].0
                        } else {
                            held[e] < b[e].1
                        };
                        if end {
                            found = Some(e);
                            break 'bfs;
                        }
                        queue.push_back(e);
                    }
                }
                let Some(mut cur) = found else { continue };
                while let Some((p, s)) = prev[cur] {
                    let (giver, receiver) = if gaining { (cur, p) } else { (p, cur) };
                    if receiver == x {
                        // x enters s, the giver leaves.
                        if let Some(f) = followers[s].iter_mut().find(|f| **f == giver) {
                            *f = x;
                        }
                        has_x[s] = true;
                        gone[s] = Some(giver);
                    } else if giver == x {
                        // x leaves s, its leaver comes back.
                        if let Some(f) = followers[s].iter_mut().find(|f| **f == x) {
                            *f = receiver;
                        }
                        has_x[s] = false;
                        gone[s] = None;
                    } else {
                        // The giver leaves s instead of its leaver.
                        if let Some(f) = followers[s].iter_mut().find(|f| **f == giver) {
                            *f = receiver;
                        }
                        gone[s] = Some(giver);
                    }
                    held[giver] -= 1;
                    held[receiver] += 1;
                    cur = p;
                }
                continue 'fix;
            }
            return;
        }
    }

    /// Bring every member of `0..=x` within `b` when taking alone could not (the corner cases
    /// described in [`Ring::place_replicas`]), by chains of follower swaps: `a0` takes a follower
    /// slot of `a1` in a shard without `a0`, `a1` one of `a2`'s, and so on, so that only the two
    /// ends change counts (augmenting paths; shortest first, so no shard is used twice).
    fn repair_replicas(
        &self,
        x: usize,
        b: &[(usize, usize)],
        leader: &[usize],
        followers: &mut [Vec<usize>],
        held: &mut [usize],
    ) {
        let members = x + 1;
        // Each applied chain brings one member one step closer to its bounds and moves nobody
        // out of them, so this ends; a violation no chain can fix is left as it is (the bounds
        // cannot all be met with these leaders).
        'fix: loop {
            for m in 0..members {
                let chain = if held[m] < b[m].0 {
                    // `m` gains a slot; the chain ends at a member above its floor.
                    self.chain(m, members, leader, followers, true, &|e| held[e] > b[e].0)
                } else if held[m] > b[m].1 {
                    // `m` loses a slot; the chain ends at a member with room.
                    self.chain(m, members, leader, followers, false, &|e| held[e] < b[e].1)
                } else {
                    continue;
                };
                if let Some(swaps) = chain {
                    for &(taker, giver, s) in &swaps {
                        if let Some(f) = followers[s].iter_mut().find(|f| **f == giver) {
                            *f = taker;
                        }
                        held[taker] += 1;
                        held[giver] -= 1;
                    }
                    continue 'fix;
                }
            }
            return;
        }
    }

    /// Breadth-first search for a chain of swaps `(taker, giver, shard)` from `start`: when
    /// `gaining`, `start` is the first taker and the last giver must satisfy `end`; otherwise
    /// `start` is the first giver and the last taker must satisfy `end`.
    fn chain(
        &self,
        start: usize,
        members: usize,
        leader: &[usize],
        followers: &[Vec<usize>],
        gaining: bool,
        end: &dyn Fn(usize) -> bool,
    ) -> Option<Vec<(usize, usize, usize)>> {
        let in_set = |s: usize, m: usize| leader[s] == m || followers[s].contains(&m);
        // prev[m] = (previous member on the chain, shard of the swap between them)
        let mut prev: Vec<Option<(usize, usize)>> = vec![None; members];
        let mut seen = vec![false; members];
        seen[start] = true;
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(a) = queue.pop_front() {
            for (s, fs) in followers.iter().enumerate() {
                let next: Vec<usize> = if gaining {
                    // `a` takes the slot of a follower `g` of a shard without `a`.
                    if in_set(s, a) {
                        continue;
                    }
                    fs.clone()
                } else {
                    // A member `t` outside the shard takes `a`'s follower slot.
                    if !fs.contains(&a) {
                        continue;
                    }
                    (0..members).filter(|&t| !in_set(s, t)).collect()
                };
                for m in next {
                    if seen[m] {
                        continue;
                    }
                    seen[m] = true;
                    prev[m] = Some((a, s));
                    if end(m) {
                        let mut swaps = Vec::new();
                        let mut cur = m;
                        while let Some((p, s)) = prev[cur] {
                            swaps.push(if gaining { (p, cur, s) } else { (cur, p, s) });
                            cur = p;
                        }
                        return Some(swaps);
                    }
                    queue.push_back(m);
                }
            }
        }
        None
    }

    /// Followers of shard `s` in walk order.
    pub fn ordered_followers(&self, s: usize, fs: &[usize]) -> Vec<BrokerId> {
        let mut v: Vec<(Rank, BrokerId)> =
            fs.iter().map(|&f| (self.rank(s, f), self.ids[f])).collect();
        v.sort_unstable();
        v.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_match_the_formulas() {
        // Equal weights: floor(S*r/N) and ceil((1+eps)*S*r/N).
        assert_eq!(bounds(&[1, 1, 1], 6, 1, 0.2), vec![(2, 3); 3]);
        assert_eq!(bounds(&[1, 1, 1], 4, 1, 0.2), vec![(1, 2); 3]);
        assert_eq!(bounds(&[1, 1, 1], 6, 2, 0.2), vec![(4, 5); 3]);
        assert_eq!(bounds(&[1, 1, 1, 1], 6, 1, 0.2), vec![(1, 2); 4]);
        assert_eq!(bounds(&[1; 10], 100, 1, 0.2), vec![(10, 12); 10]);
        // Copies beyond the member count: everyone holds everything.
        assert_eq!(bounds(&[1, 1], 5, 3, 0.2), vec![(5, 5); 2]);
        // Weighted: 1:3 of 8 shards -> 2 and 6.
        assert_eq!(bounds(&[1, 3], 8, 1, 0.0), vec![(2, 2), (6, 6)]);
        // A heavy member would deserve more than one copy of every shard: pinned at S, the rest
        // shared by the others (3 shards x 2 copies: heavy 3, the two light ones 1.5 each).
        assert_eq!(bounds(&[10, 1, 1], 3, 2, 0.0), vec![(3, 3), (1, 2), (1, 2)]);
        // Bad eps is 0, infinite eps is "no cap" (capped at one copy per shard).
        assert_eq!(bounds(&[1, 1], 4, 1, f64::NAN), vec![(2, 2); 2]);
        assert_eq!(bounds(&[1, 1], 4, 1, f64::INFINITY), vec![(2, 4); 2]);
        assert_eq!(bounds(&[1, 1], 0, 2, 0.2), vec![(0, 0); 2]);
        assert!(bounds(&[], 4, 1, 0.2).is_empty());
    }
}
