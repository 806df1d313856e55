//! A trailing window over the last `capacity` samples with its order statistics (any percentile)
//! in O(log capacity) per sample, for causal baselines (ALGORITHMS.md §3).
//!
//! A treap (randomised binary search tree with subtree sizes) over a fixed arena: arena slot `i`
//! is ring position `i`, so the newest sample takes over the node of the one it pushes out and
//! nothing is allocated once the window exists. Priorities are a hash of the slot, independent of
//! the values, which is all a treap needs for its expected O(log n) depth. Ties between equal
//! values are broken by slot, so every stored sample has a distinct place and removal finds it.
//! Written here because no maintained crate offers a sliding (not cumulative) percentile without
//! allocating per sample.

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct OrderWindow {
    key: Vec<f64>,
    left: Vec<u32>,
    right: Vec<u32>,
    size: Vec<u32>,
    /// Whether the slot holds a sample (missing samples, NaN, occupy a slot but no node).
    present: Vec<bool>,
    root: u32,
    /// The ring position the next sample takes.
    next: usize,
    len: usize,
}

/// splitmix32-style mixing: a fixed pseudo-random priority per slot.
#[inline]
fn priority(slot: u32) -> u32 {
    let mut z = slot.wrapping_add(0x9E37_79B9);
    z = (z ^ (z >> 16)).wrapping_mul(0x21F0_AAAD);
    z = (z ^ (z >> 15)).wrapping_mul(0x735A_2D97);
    z ^ (z >> 15)
}

impl OrderWindow {
    /// A window over the last `capacity` samples (at least 1, at most `u32::MAX - 1`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, (NIL - 1) as usize);
        OrderWindow {
            key: vec![0.0; capacity],
            left: vec![NIL; capacity],
            right: vec![NIL; capacity],
            size: vec![0; capacity],
            present: vec![false; capacity],
            root: NIL,
            next: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.key.len()
    }

    /// Values in the window (missing samples excluded).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the newest sample, dropping the oldest once the window is full. A NaN is a missing
    /// sample: it takes its place in time but is left out of the order statistics.
    pub fn push(&mut self, x: f64) {
        let s = self.next;
        self.next = if s + 1 == self.key.len() { 0 } else { s + 1 };
        let slot = s as u32;
        if self.present[s] {
            self.root = self.remove(self.root, slot);
            self.present[s] = false;
            self.len -= 1;
        }
        if x.is_nan() {
            return;
        }
        self.key[s] = x;
        self.left[s] = NIL;
        self.right[s] = NIL;
        self.size[s] = 1;
        self.present[s] = true;
        self.len += 1;
        self.root = self.insert(self.root, slot);
    }

    /// The `k`-th smallest value (0-based); `None` past the end.
    pub fn kth(&self, mut k: usize) -> Option<f64> {
        if k >= self.len {
            return None;
        }
        let mut t = self.root;
        while t != NIL {
            let l = self.left[t as usize];
            let ls = self.sz(l) as usize;
            if k < ls {
                t = l;
            } else if k == ls {
                return Some(self.key[t as usize]);
            } else {
                k -= ls + 1;
                t = self.right[t as usize];
            }
        }
        None
    }

    /// The `p`-th percentile (0–100) of the values in the window, interpolated linearly between
    /// order statistics as `numpy.percentile` does by default; NaN when the window is empty.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.len == 0 {
            return f64::NAN;
        }
        let pos = (p / 100.0) * (self.len - 1) as f64;
        let lo = pos.floor();
        let g = pos - lo;
        let lo = lo as usize;
        let a = self.kth(lo).unwrap_or(f64::NAN);
        if g == 0.0 || lo + 1 >= self.len {
            return a;
        }
        let b = self.kth(lo + 1).unwrap_or(f64::NAN);
        // numpy's _lerp: from the nearer end, so that g = 1 gives b exactly.
        let d = b - a;
        if g >= 0.5 {
            b - d * (1.0 - g)
        } else {
            a + d * g
        }
    }

    #[inline]
    fn sz(&self, t: u32) -> u32 {
        if t == NIL {
            0
        } else {
            self.size[t as usize]
        }
    }

    #[inline]
    fn update(&mut self, t: u32) {
        let i = t as usize;
        self.size[i] = 1 + self.sz(self.left[i]) + self.sz(self.right[i]);
    }

    /// Strict order of stored samples: by value, then by slot.
    #[inline]
    fn less(&self, a: u32, b: u32) -> bool {
        match self.key[a as usize].total_cmp(&self.key[b as usize]) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => a < b,
        }
    }

    fn insert(&mut self, t: u32, s: u32) -> u32 {
        if t == NIL {
            return s;
        }
        if priority(s) > priority(t) {
            let (l, r) = self.split(t, s);
            self.left[s as usize] = l;
            self.right[s as usize] = r;
            self.update(s);
            return s;
        }
        if self.less(s, t) {
            let l = self.insert(self.left[t as usize], s);
            self.left[t as usize] = l;
        } else {
            let r = self.insert(self.right[t as usize], s);
            self.right[t as usize] = r;
        }
        self.size[t as usize] += 1;
        t
    }

    /// Splits subtree `t` into the samples ordered before `s` and those after.
    fn split(&mut self, t: u32, s: u32) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.less(t, s) {
            let (l, r) = self.split(self.right[t as usize], s);
            self.right[t as usize] = l;
            self.update(t);
            (t, r)
        } else {
            let (l, r) = self.split(self.left[t as usize], s);
            self.left[t as usize] = r;
            self.update(t);
            (l, t)
        }
    }

    /// Removes stored sample `s` from subtree `t` (which holds it).
    fn remove(&mut self, t: u32, s: u32) -> u32 {
        if t == NIL {
            return NIL;
        }
        if t == s {
            return self.merge(self.left[t as usize], self.right[t as usize]);
        }
        if self.less(s, t) {
            let l = self.remove(self.left[t as usize], s);
            self.left[t as usize] = l;
        } else {
            let r = self.remove(self.right[t as usize], s);
            self.right[t as usize] = r;
        }
        self.update(t);
        t
    }

    /// Joins two subtrees, every sample of `a` ordered before every sample of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if priority(a) > priority(b) {
            let r = self.merge(self.right[a as usize], b);
            self.right[a as usize] = r;
            self.update(a);
            a
        } else {
            let l = self.merge(a, self.left[b as usize]);
            self.left[b as usize] = l;
            self.update(b);
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Against sorting the window's values afresh (with ties and missing samples).
    #[test]
    fn order_statistics_match_a_sorted_copy() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for cap in [1usize, 2, 5, 64] {
            let mut w = OrderWindow::new(cap);
            let mut hist: Vec<f64> = Vec::new();
            for _ in 0..1000 {
                let x = match rng.random_range(0..10) {
                    0 => f64::NAN,
                    1..=3 => rng.random_range(0..4) as f64,
                    _ => rng.random::<f64>() * 10.0 - 5.0,
                };
                w.push(x);
                hist.push(x);
                let start = hist.len().saturating_sub(cap);
                let mut v: Vec<f64> = hist[start..]
                    .iter()
                    .copied()
                    .filter(|x| !x.is_nan())
                    .collect();
                v.sort_by(f64::total_cmp);
                assert_eq!(w.len(), v.len());
                for (k, want) in v.iter().enumerate() {
                    assert_eq!(w.kth(k), Some(*want), "cap {cap} k {k}");
                }
                assert_eq!(w.kth(v.len()), None);
            }
        }
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let mut w = OrderWindow::new(10);
        for x in [3.0, 1.0, 4.0, 1.0, 5.0] {
            w.push(x);
        }
        // numpy.percentile([3, 1, 4, 1, 5], q): 8 → 1.0, 50 → 3.0, 90 → 4.6, 100 → 5.0
        assert_eq!(w.percentile(8.0), 1.0);
        assert_eq!(w.percentile(50.0), 3.0);
        assert!((w.percentile(90.0) - 4.6).abs() < 1e-12);
        assert_eq!(w.percentile(100.0), 5.0);
        assert!(OrderWindow::new(3).percentile(50.0).is_nan());
    }
}
