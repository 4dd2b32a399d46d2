//! Exact per-latent class statistics from sparse per-image scores: for every (class, latent)
//! the AUROC of the latent's score as a detector of the class (Mann–Whitney U with tied
//! scores, zeros included, counted as one tie block), the class mean minus the rest's mean,
//! and the best F1 of a threshold on the best latent.
//!
//! Input: images 0..N, each with its sparse scores (latent, value > 0) and a class in
//! 0..C (−1: left out). Cost: O(nnz·log nnz + F·C) time, O(nnz + F + C·top) memory; the
//! per-image values of every latent are read from the sparse entries, nothing of size
//! N × F exists.

use std::collections::BinaryHeap;

/// Sparse per-image scores, row-compressed: image i's entries are `start[i]..start[i+1]`.
#[derive(Debug, Clone, Default)]
pub struct SparseScores {
    pub start: Vec<u64>,
    pub latent: Vec<u32>,
    pub value: Vec<f32>,
}

impl SparseScores {
    pub fn new() -> SparseScores {
        SparseScores {
            start: vec![0],
            latent: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Images held.
    pub fn images(&self) -> usize {
        self.start.len() - 1
    }

    /// Entries held.
    pub fn entries(&self) -> usize {
        self.latent.len()
    }

    /// Append one image's entries (values ≤ 0 are dropped).
    pub fn push(&mut self, entries: impl IntoIterator<Item = (u32, f32)>) {
        for (l, v) in entries {
            if v > 0.0 {
                self.latent.push(l);
                self.value.push(v);
            }
        }
        self.start.push(self.latent.len() as u64);
    }

    /// Image i's entries.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (a, b) = (self.start[i] as usize, self.start[i + 1] as usize);
        self.latent[a..b]
            .iter()
            .copied()
            .zip(self.value[a..b].iter().copied())
    }
}

/// The best latent of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BestLatent {
    pub latent: usize,
    pub auroc: f64,
    /// Best F1 over thresholds `score ≥ t` of this latent.
    pub f1: f64,
}

/// What [`class_statistics`] finds.
#[derive(Debug, Clone)]
pub struct ClassStats {
    /// Images per class (those with a class).
    pub count: Vec<usize>,
    /// Best latent per class (None for a class without images or without any image
    /// outside it, or when no latent ever fired).
    pub best: Vec<Option<BestLatent>>,
    /// Per class, up to `top` latents with the largest positive mean difference
    /// (class mean − rest mean), best first.
    pub by_mean_difference: Vec<Vec<usize>>,
    /// Per latent, the class it detects best and that AUROC (None for a latent that never
    /// fired on an image with a class, or when no class has images both in and out).
    pub best_class: Vec<Option<(usize, f64)>>,
}

/// Each image's non-zero scores of a [B, F] score tensor (one host read per call).
pub fn sparse_rows(scores: &tch::Tensor) -> anyhow::Result<Vec<Vec<(u32, f32)>>> {
    let b = scores.size2()?.0 as usize;
    let live = scores.gt(0.0);
    let nz = live.nonzero().to_device(tch::Device::Cpu); // n, 2
    let vals = scores
        .masked_select(&live)
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float);
    let pairs = Vec::<i64>::try_from(nz.reshape([-1]))?;
    let vals = Vec::<f32>::try_from(vals)?;
    let mut per_image: Vec<Vec<(u32, f32)>> = vec![Vec::new(); b];
    for (p, v) in pairs.chunks(2).zip(vals) {
        per_image[p[0] as usize].push((p[1] as u32, v));
    }
    Ok(per_image)
}

/// Per latent, its entries (image, value) sorted by value ascending.
fn columns(s: &SparseScores, classes: &[i64], d_sae: usize) -> (Vec<usize>, Vec<(u32, f32)>) {
    let mut count = vec![0usize; d_sae + 1];
    for (i, &class) in classes.iter().enumerate() {
        if class < 0 {
            continue;
        }
        for (l, _) in s.row(i) {
            count[l as usize + 1] += 1;
        }
    }
    for j in 0..d_sae {
        count[j + 1] += count[j];
    }
    let mut fill = count.clone();
    let mut entries = vec![(0u32, 0f32); count[d_sae]];
    for (i, &class) in classes.iter().enumerate() {
        if class < 0 {
            continue;
        }
        for (l, v) in s.row(i) {
            entries[fill[l as usize]] = (i as u32, v);
            fill[l as usize] += 1;
        }
    }
    for j in 0..d_sae {
        entries[count[j]..count[j + 1]].sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    }
    (count, entries)
}

/// Min-heap entry for the per-class top lists: (difference, latent), smallest on top.
#[derive(PartialEq)]
struct Ranked(f64, usize);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap's top is the smallest difference (then the largest latent).
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

/// AUROC, mean difference and best latent of every class. `classes[i]` in 0..n_classes or
/// −1 (image left out).
pub fn class_statistics(
    s: &SparseScores,
    classes: &[i64],
    n_classes: usize,
    d_sae: usize,
    top: usize,
) -> ClassStats {
    assert_eq!(classes.len(), s.images(), "one class per image");
    let mut count = vec![0usize; n_classes];
    for &c in classes.iter().filter(|&&c| c >= 0) {
        count[c as usize] += 1;
    }
    let n: usize = count.iter().sum();
    let (offsets, entries) = columns(s, classes, d_sae);
    let mut best: Vec<Option<(f64, usize)>> = vec![None; n_classes];
    let mut best_class: Vec<Option<(usize, f64)>> = vec![None; d_sae];
    let mut heaps: Vec<BinaryHeap<Ranked>> = (0..n_classes).map(|_| BinaryHeap::new()).collect();
    let mut rank_sum = vec![0f64; n_classes];
    let mut value_sum = vec![0f64; n_classes];
    let mut hits = vec![0usize; n_classes];
    let mut touched: Vec<usize> = Vec::new();
    for j in 0..d_sae {
        let col = &entries[offsets[j]..offsets[j + 1]];
        if col.is_empty() {
            continue;
        }
        let m = col.len();
        let zeros = (n - m) as f64;
        let zero_rank = (zeros + 1.0) / 2.0;
        let mut total = 0f64;
        let mut a = 0;
        while a < m {
            let mut b = a + 1;
            while b < m && col[b].1 == col[a].1 {
                b += 1;
            }
            // Positions a..b (0-based among the non-zeros) share the average rank.
            let rank = zeros + (a + b + 1) as f64 / 2.0;
            for &(img, v) in &col[a..b] {
                let c = classes[img as usize] as usize;
                if hits[c] == 0 {
                    touched.push(c);
                }
                hits[c] += 1;
                rank_sum[c] += rank;
                value_sum[c] += v as f64;
                total += v as f64;
            }
            a = b;
        }
        for c in 0..n_classes {
            let (nc, rest) = (count[c] as f64, (n - count[c]) as f64);
            if count[c] == 0 || count[c] == n {
                continue;
            }
            let r = rank_sum[c] + (nc - hits[c] as f64) * zero_rank;
            let auroc = (r - nc * (nc + 1.0) / 2.0) / (nc * rest);
            if best[c].is_none_or(|(b, _)| auroc > b) {
                best[c] = Some((auroc, j));
            }
            if best_class[j].is_none_or(|(_, b)| auroc > b) {
                best_class[j] = Some((c, auroc));
            }
            let diff = value_sum[c] / nc - (total - value_sum[c]) / rest;
            if diff > 0.0 && top > 0 {
                let h = &mut heaps[c];
                if h.len() < top {
                    h.push(Ranked(diff, j));
                } else if h.peek().is_some_and(|w| diff > w.0) {
                    h.pop();
                    h.push(Ranked(diff, j));
                }
            }
        }
        for c in touched.drain(..) {
            rank_sum[c] = 0.0;
            value_sum[c] = 0.0;
            hits[c] = 0;
        }
    }
    let best = best
        .into_iter()
        .enumerate()
        .map(|(c, b)| {
            b.map(|(auroc, j)| BestLatent {
                latent: j,
                auroc,
                f1: best_f1(
                    &entries[offsets[j]..offsets[j + 1]],
                    classes,
                    c,
                    count[c],
                    n,
                ),
            })
        })
        .collect();
    let by_mean_difference = heaps
        .into_iter()
        .map(|h| {
            let mut v = h.into_vec();
            v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            v.into_iter().map(|r| r.1).collect()
        })
        .collect();
    ClassStats {
        count,
        best,
        by_mean_difference,
        best_class,
    }
}

/// Best F1 of `score ≥ t` for class `c` over thresholds t: every distinct non-zero value,
/// and 0 (every image).
fn best_f1(col: &[(u32, f32)], classes: &[i64], c: usize, nc: usize, n: usize) -> f64 {
    let mut best = 2.0 * nc as f64 / (nc + n) as f64;
    let (mut tp, mut predicted) = (0usize, 0usize);
    let mut b = col.len();
    while b > 0 {
        let mut a = b - 1;
        while a > 0 && col[a - 1].1 == col[b - 1].1 {
            a -= 1;
        }
        for &(img, _) in &col[a..b] {
            predicted += 1;
            tp += usize::from(classes[img as usize] == c as i64);
        }
        best = best.max(2.0 * tp as f64 / (predicted + nc) as f64);
        b = a;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUROC by brute force over all (positive, negative) pairs.
    fn brute(values: &[f32], pos: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &a) in values.iter().enumerate() {
            for (k, &b) in values.iter().enumerate() {
                if pos[i] && !pos[k] {
                    pairs += 1.0;
                    wins += if a > b {
                        1.0
                    } else if a == b {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn auroc_matches_pairs_with_ties_and_zeros() {
        // 3 latents, 9 images, 3 classes; ties and zeros on purpose.
        let dense: [[f32; 3]; 9] = [
            [1.0, 0.0, 0.5],
            [2.0, 0.0, 0.5],
            [2.0, 1.0, 0.0],
            [0.0, 1.0, 0.5],
            [0.0, 3.0, 0.0],
            [0.5, 0.0, 0.0],
            [0.0, 0.0, 0.5],
            [0.0, 2.0, 0.5],
            [1.0, 0.0, 0.0],
        ];
        let classes = [0i64, 0, 0, 1, 1, 1, 2, 2, -1];
        let mut s = SparseScores::new();
        for row in dense {
            s.push(row.iter().enumerate().map(|(l, &v)| (l as u32, v)));
        }
        let stats = class_statistics(&s, &classes, 3, 3, 2);
        let kept: Vec<usize> = (0..9).filter(|&i| classes[i] >= 0).collect();
        for c in 0..3 {
            let pos: Vec<bool> = kept.iter().map(|&i| classes[i] == c as i64).collect();
            let mut want = (f64::NEG_INFINITY, 0);
            for j in 0..3 {
                let v: Vec<f32> = kept.iter().map(|&i| dense[i][j]).collect();
                let a = brute(&v, &pos);
                if a > want.0 {
                    want = (a, j);
                }
            }
            let got = stats.best[c].unwrap();
            assert!(
                (got.auroc - want.0).abs() < 1e-12,
                "class {c}: {got:?} vs {want:?}"
            );
            assert_eq!(got.latent, want.1);
        }
        // Per latent: the class it detects best.
        for j in 0..3 {
            let v: Vec<f32> = kept.iter().map(|&i| dense[i][j]).collect();
            let mut want = (0, f64::NEG_INFINITY);
            for c in 0..3 {
                let pos: Vec<bool> = kept.iter().map(|&i| classes[i] == c as i64).collect();
                let a = brute(&v, &pos);
                if a > want.1 {
                    want = (c, a);
                }
            }
            let got = stats.best_class[j].unwrap();
            assert_eq!(got.0, want.0, "latent {j}");
            assert!(
                (got.1 - want.1).abs() < 1e-12,
                "latent {j}: {got:?} vs {want:?}"
            );
        }
        assert_eq!(stats.count, vec![3, 3, 2]);
        assert_eq!(stats.by_mean_difference[0][0], 0);
        assert_eq!(stats.by_mean_difference[1][0], 1);
        // Latent 0 on class 0: threshold 1.0 catches all three and nothing else → F1 = 1.
        assert!((stats.best[0].unwrap().f1 - 1.0).abs() < 1e-12);
    }
}
