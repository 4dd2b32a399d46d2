//! Top-k, batch top-k and AuxK selection on the CPU, written over the contiguous
//! pre-activation buffer [B, F] instead of through libtorch's general `topk` (which on the
//! CPU sorts scratch copies of every row and costs a large part of a training step).
//!
//! Each row is scanned once against a running threshold: a value enters a small candidate
//! buffer only when it beats the k-th largest value seen so far, and the buffer is cut back
//! to its k best (`select_nth_unstable_by`) whenever it fills. Rows run in parallel (rayon)
//! when libtorch is allowed more than one thread (`tch::get_num_threads`), so a one-thread
//! run stays on one thread.
//!
//! # Order and ties
//! The result is defined without reference to libtorch's internals: the k entries of a
//! row are its k largest values, sorted by value descending and, among equal values, by
//! latent ascending (the lowest latents win a tie at the k-th place). Comparisons are the
//! IEEE ones, so −0.0 ties with 0.0 (and the value returned keeps its sign bit, as
//! `torch.topk` does). On rows without ties this is exactly `torch.topk(k, 1, largest=True,
//! sorted=True)`; with ties libtorch's order depends on its sorting algorithm, while the
//! values are the same. Batch top-k returns the k·B largest values of the whole buffer
//! (ties at the boundary again going to the lowest flat index row·F + latent), in row-major
//! order, as [`super::model::select_with`] documents.
//!
//! Non-finite pre-activations (NaN, ±∞) are an error: a NaN has no place in the order and
//! means the training has diverged.

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::model::Codes;

/// Values and latents of each row's k largest pre-activations, row by row. [B·k] each
#[derive(Debug, Clone, PartialEq)]
pub struct RowTopK {
    pub values: Vec<f32>,
    pub latents: Vec<i64>,
}

/// `a` before `b` in the selection order: larger value first, then lower latent.
#[inline]
fn before(a: &(f32, i64), b: &(f32, i64)) -> std::cmp::Ordering {
    // Both finite (checked before any selection), so partial_cmp never fails.
    b.0.partial_cmp(&a.0)
        .unwrap_or(std::cmp::Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Whether every value is finite (written to vectorise: no early exit).
fn all_finite(values: &[f32]) -> bool {
    values.iter().fold(0u32, |acc, v| {
        acc | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
    }) == 0
}

/// The k best of the candidates (value, latent) yielded by `entries`, sorted, appended to
/// `values` / `latents`. `scratch` is reused between rows. Requires k ≤ number of entries.
fn row_top_k(
    entries: impl Iterator<Item = (f32, i64)>,
    k: usize,
    scratch: &mut Vec<(f32, i64)>,
    values: &mut [f32],
    latents: &mut [i64],
) {
    let cap = (4 * k).max(k + 64);
    scratch.clear();
    // −∞ until k entries are kept (every finite value passes), then their k-th best.
    let mut threshold = f32::NEG_INFINITY;
    for (v, j) in entries {
        // Entries come in ascending latent order: once k entries ≥ threshold are kept,
        // a later value equal to it loses the tie, so only larger values need keeping.
        if v > threshold {
            scratch.push((v, j));
            if scratch.len() == cap {
                scratch.select_nth_unstable_by(k - 1, before);
                scratch.truncate(k);
                threshold = scratch[k - 1].0;
            }
        }
    }
    if scratch.len() > k {
        scratch.select_nth_unstable_by(k - 1, before);
        scratch.truncate(k);
    }
    scratch.sort_unstable_by(before);
    for (i, &(v, j)) in scratch.iter().enumerate() {
        values[i] = v;
        latents[i] = j;
    }
}

/// The pre-activations as a slice: `pre` must be a contiguous f32 CPU tensor [B, F].
fn as_rows(pre: &Tensor) -> Result<(&[f32], usize, usize)> {
    let (b, f) = pre
        .size2()
        .map_err(|_| anyhow::anyhow!("selection: pre-activations must be [B, F]"))?;
    ensure!(
        pre.kind() == Kind::Float && pre.device() == Device::Cpu && pre.is_contiguous(),
        "selection: pre-activations must be a contiguous f32 CPU tensor, got {:?} on {:?}",
        pre.kind(),
        pre.device()
    );
    let n = (b * f) as usize;
    let data = if n == 0 {
        &[][..]
    } else {
        // SAFETY: a contiguous f32 CPU tensor of b·f elements starts at data_ptr; the
        // slice lives no longer than the borrow of `pre`.
        unsafe { std::slice::from_raw_parts(pre.data_ptr() as *const f32, n) }
    };
    Ok((data, b as usize, f as usize))
}

fn parallel() -> bool {
    tch::get_num_threads() > 1
}

fn check_finite(data: &[f32], f: usize) -> Result<()> {
    let bad = |row: &[f32]| !all_finite(row);
    let found = if parallel() {
        data.par_chunks(f.max(1)).position_first(bad)
    } else {
        data.chunks(f.max(1)).position(bad)
    };
    if let Some(row) = found {
        bail!("selection: row {row} of the pre-activations holds a NaN or infinite value (the training diverged?)");
    }
    Ok(())
}

/// Per row over `columns` (ascending latents, all < F; None = every latent), the k
/// largest pre-activations, sorted (module docs).
fn top_k_rows(pre: &Tensor, k: usize, columns: Option<&[i64]>) -> Result<RowTopK> {
    let (data, b, f) = as_rows(pre)?;
    let width = columns.map_or(f, |c| c.len());
    ensure!(
        (1..=width).contains(&k),
        "top-k needs 1 <= k <= {width}, got {k}"
    );
    check_finite(data, f)?;
    let mut values = vec![0f32; b * k];
    let mut latents = vec![0i64; b * k];
    let run = |(r, (vs, ls)): (usize, (&mut [f32], &mut [i64])), scratch: &mut Vec<_>| {
        let row = &data[r * f..(r + 1) * f];
        match columns {
            None => row_top_k(
                row.iter().enumerate().map(|(j, &v)| (v, j as i64)),
                k,
                scratch,
                vs,
                ls,
            ),
            Some(c) => row_top_k(c.iter().map(|&j| (row[j as usize], j)), k, scratch, vs, ls),
        }
    };
    if parallel() {
        values
            .par_chunks_mut(k)
            .zip(latents.par_chunks_mut(k))
            .enumerate()
            .for_each_init(Vec::new, |scratch, item| run(item, scratch));
    } else {
        let mut scratch = Vec::new();
        for item in values.chunks_mut(k).zip(latents.chunks_mut(k)).enumerate() {
            run(item, &mut scratch);
        }
    }
    Ok(RowTopK { values, latents })
}

/// Each row's k largest pre-activations of `pre` [B, F] (contiguous f32, CPU), sorted by
/// value descending then latent ascending (module docs).
pub fn top_k(pre: &Tensor, k: usize) -> Result<RowTopK> {
    top_k_rows(pre, k, None)
}

/// Each row's k largest pre-activations among the latents `columns` (ascending, < F), in
/// the same order; costs B·|columns|, not B·F (AuxK over the dead latents).
pub fn top_k_among(pre: &Tensor, k: usize, columns: &[i64]) -> Result<RowTopK> {
    let (_, _, f) = as_rows(pre)?;
    ensure!(
        columns.windows(2).all(|w| w[0] < w[1]),
        "top-k among latents: the latents must be ascending and distinct"
    );
    if let Some(&last) = columns.last() {
        ensure!(
            columns[0] >= 0 && (last as usize) < f,
            "top-k among latents: latent {last} is out of range for F = {f}"
        );
    }
    top_k_rows(pre, k, Some(columns))
}

/// Codes from a row-wise selection: ReLU'd values, B rows of k entries each.
fn row_codes(sel: RowTopK, b: i64, k: i64, d_sae: i64) -> Codes {
    let values = Tensor::from_slice(&sel.values).relu();
    let latents = Tensor::from_slice(&sel.latents);
    let rows = Tensor::arange(b, (Kind::Int64, Device::Cpu))
        .unsqueeze(1)
        .expand([b, k], false)
        .reshape([-1]);
    Codes {
        values,
        latents,
        rows,
        offsets: Tensor::arange_start_step(0, b * k + 1, k, (Kind::Int64, Device::Cpu)),
        d_sae,
    }
}

/// Top-k codes of `pre` [B, F] (contiguous f32 CPU): as `select_with(pre, TopK(k), false)`
/// builds them, from [`top_k`].
pub fn top_k_codes(pre: &Tensor, k: i64) -> Result<Codes> {
    let (b, f) = pre.size2()?;
    ensure!(k >= 1, "top-k needs 1 <= k <= {f}, got {k}");
    let sel = top_k(pre, k as usize)?;
    Ok(row_codes(sel, b, k, f))
}

/// AuxK's codes: per row the k largest pre-activations among the ascending latents `dead`
/// (k ≤ |dead|), latents as ids in 0..F.
pub fn top_k_among_codes(pre: &Tensor, k: i64, dead: &[i64]) -> Result<Codes> {
    let (b, f) = pre.size2()?;
    ensure!(k >= 1, "AuxK top-k needs k >= 1, got {k}");
    let sel = top_k_among(pre, k as usize, dead)?;
    Ok(row_codes(sel, b, k, f))
}

/// The k·B largest values of `pre` [B, F] as (values, rows, latents) in row-major order,
/// ties at the boundary to the lowest flat index (module docs).
///
/// A bound comes from a sample (every 13th value, ranked to where the batch's 2k·B-th
/// largest should sit); one pass collects the values at or above it; when there are at
/// least k·B of them the answer is among them, else the sample rank is made four times
/// deeper, and at last every value is a candidate.
pub fn batch_top_k(pre: &Tensor, k: usize) -> Result<(Vec<f32>, Vec<i64>, Vec<i64>)> {
    let (data, b, f) = as_rows(pre)?;
    ensure!(
        (1..=f).contains(&k),
        "batch top-k needs 1 <= k <= {f}, got {k}"
    );
    check_finite(data, f)?;
    const STRIDE: usize = 13;
    let total = k * b;
    let sample: Vec<f32> = data.iter().step_by(STRIDE).copied().collect();
    let mut rank = (2 * total).div_ceil(STRIDE).min(sample.len());
    let mut candidates: Vec<(f32, i64)> = Vec::new();
    for attempt in 0..3 {
        let bound = if attempt == 2 || rank == 0 || 16 * total > data.len() {
            f32::NEG_INFINITY
        } else {
            let mut s = sample.clone();
            let (_, nth, _) = s.select_nth_unstable_by(rank - 1, |a, b| b.total_cmp(a));
            *nth
        };
        let collect_row = |(r, row): (usize, &[f32])| -> Vec<(f32, i64)> {
            let base = (r * f) as i64;
            row.iter()
                .enumerate()
                .filter(|(_, &v)| v >= bound)
                .map(|(j, &v)| (v, base + j as i64))
                .collect()
        };
        candidates = if parallel() {
            data.par_chunks(f)
                .enumerate()
                .flat_map_iter(collect_row)
                .collect()
        } else {
            data.chunks(f).enumerate().flat_map(collect_row).collect()
        };
        if candidates.len() >= total {
            break;
        }
        rank = (4 * rank).min(sample.len());
    }
    if candidates.len() > total {
        candidates.select_nth_unstable_by(total - 1, before);
        candidates.truncate(total);
    }
    // Row-major order: by flat index.
    candidates.sort_unstable_by_key(|e| e.1);
    let fi = f as i64;
    let values = candidates.iter().map(|e| e.0).collect();
    let rows = candidates.iter().map(|e| e.1 / fi).collect();
    let latents = candidates.iter().map(|e| e.1 % fi).collect();
    Ok((values, rows, latents))
}

/// Batch top-k codes of `pre` [B, F] (contiguous f32 CPU), as `select_with(pre,
/// BatchTopK(k), false)` builds them, from [`batch_top_k`].
pub fn batch_top_k_codes(pre: &Tensor, k: i64) -> Result<Codes> {
    let (b, f) = pre.size2()?;
    ensure!(k >= 1, "batch top-k needs 1 <= k <= {f}, got {k}");
    let (values, rows, latents) = batch_top_k(pre, k as usize)?;
    let mut offsets = vec![0i64; b as usize + 1];
    for &r in &rows {
        offsets[r as usize + 1] += 1;
    }
    for i in 0..b as usize {
        offsets[i + 1] += offsets[i];
    }
    Ok(Codes {
        values: Tensor::from_slice(&values).relu(),
        latents: Tensor::from_slice(&latents),
        rows: Tensor::from_slice(&rows),
        offsets: Tensor::from_slice(&offsets),
        d_sae: f,
    })
}

/// Whether `pre` can take the Rust selection (a contiguous f32 CPU buffer).
pub fn applies(pre: &Tensor) -> bool {
    pre.device() == Device::Cpu && pre.kind() == Kind::Float && pre.is_contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torch_sorted(pre: &Tensor, k: i64) -> (Vec<f32>, Vec<i64>) {
        let (v, i) = pre.topk(k, 1, true, true);
        (
            Vec::<f32>::try_from(v.reshape([-1])).unwrap(),
            Vec::<i64>::try_from(i.reshape([-1])).unwrap(),
        )
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn random(b: i64, f: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([b, f], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn equals_torch_topk_sorted_without_ties() {
        for (b, f, k) in [
            (7, 50, 1),
            (7, 50, 5),
            (33, 300, 16),
            (5, 64, 64),
            (3, 2048, 700),
        ] {
            let pre = random(b, f, b + f + k);
            let ours = top_k(&pre, k as usize).unwrap();
            let (tv, ti) = torch_sorted(&pre, k);
            assert_eq!(bits(&ours.values), bits(&tv), "values, b {b} f {f} k {k}");
            assert_eq!(ours.latents, ti, "latents, b {b} f {f} k {k}");
        }
    }

    #[test]
    fn ties_go_to_the_lowest_latents() {
        // Many exact ties: values from a set of 4, and a row of equal values.
        let pre = (random(6, 200, 3) * 1.5).round().clamp(-1.0, 2.0);
        let _ = pre.get(5).fill_(0.25);
        for k in [1, 3, 17, 200] {
            let ours = top_k(&pre, k).unwrap();
            let (tv, _) = torch_sorted(&pre, k as i64);
            // The same values as torch (−0.0 and 0.0 compare equal: which of two tied
            // zeros is kept follows the tie rule, so compare as numbers).
            assert!(ours.values == tv, "k {k}: the values are not torch's");
            // The rule itself, checked against a plain sort of each row.
            let rows = Vec::<Vec<f32>>::try_from(&pre).unwrap();
            for (r, row) in rows.iter().enumerate() {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
                let want: Vec<i64> = idx[..k].iter().map(|&j| j as i64).collect();
                assert_eq!(ours.latents[r * k..(r + 1) * k], want[..], "row {r} k {k}");
            }
        }
        // An all-equal row takes latents 0..k.
        let ours = top_k(&pre.get(5).unsqueeze(0).contiguous(), 4).unwrap();
        assert_eq!(ours.latents, vec![0, 1, 2, 3]);
    }

    #[test]
    fn negative_zero_ties_with_zero_and_keeps_its_sign() {
        let pre = Tensor::from_slice(&[-0.0f32, 0.0, -1.0, -0.0, 0.0]).view([1, 5]);
        let ours = top_k(&pre, 3).unwrap();
        assert_eq!(ours.latents, vec![0, 1, 3]);
        assert_eq!(bits(&ours.values), bits(&[-0.0, 0.0, -0.0]));
        let (tv, _) = torch_sorted(&pre, 3);
        // torch also returns three zeros (which ones is its own tie order).
        assert!(ours.values == tv);
    }

    #[test]
    fn non_finite_is_an_error() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let pre = random(4, 30, 1);
            let _ = pre.get(2).get(7).fill_(bad as f64);
            let e = top_k(&pre, 3).unwrap_err().to_string();
            assert!(e.contains("row 2") && e.contains("NaN or infinite"), "{e}");
            assert!(batch_top_k(&pre, 3).is_err());
            assert!(top_k_among(&pre, 2, &[1, 7, 9]).is_err());
        }
        assert!(top_k(&random(2, 5, 1), 6).is_err());
        assert!(top_k(&random(2, 5, 1), 0).is_err());
    }

    #[test]
    fn among_columns_equals_topk_of_the_gathered_columns() {
        let pre = random(40, 500, 5);
        let cols: Vec<i64> = (0..500).filter(|j| j % 7 == 3 || j % 11 == 0).collect();
        let gathered = pre.index_select(1, &Tensor::from_slice(&cols));
        for k in [1, 9, cols.len()] {
            let ours = top_k_among(&pre, k, &cols).unwrap();
            let (tv, ti) = torch_sorted(&gathered, k as i64);
            assert_eq!(bits(&ours.values), bits(&tv));
            let want: Vec<i64> = ti.iter().map(|&p| cols[p as usize]).collect();
            assert_eq!(ours.latents, want);
        }
        assert!(top_k_among(&pre, 2, &[5, 3]).is_err());
        assert!(top_k_among(&pre, 2, &[5, 500]).is_err());
    }

    #[test]
    fn batch_top_k_equals_a_flat_topk() {
        for (b, f, k, scale_rows) in [
            (64, 300, 8, false),
            (64, 300, 8, true),
            (5, 20, 20, false),
            (3, 40, 1, true),
        ] {
            let pre = random(b, f, b + k);
            let pre = if scale_rows {
                tch::manual_seed(9);
                (pre * Tensor::empty([b, 1], (Kind::Float, Device::Cpu)).exponential_(1.0))
                    .contiguous()
            } else {
                pre
            };
            let (v, rows, latents) = batch_top_k(&pre, k as usize).unwrap();
            let (tv, ti) = pre.reshape([-1]).topk(k * b, 0, true, true);
            let (flat, order) = ti.sort(0, false);
            let tv = Vec::<f32>::try_from(tv.index_select(0, &order)).unwrap();
            let flat = Vec::<i64>::try_from(flat).unwrap();
            let ours: Vec<i64> = rows.iter().zip(&latents).map(|(r, l)| r * f + l).collect();
            assert_eq!(ours, flat, "b {b} f {f} k {k}");
            assert_eq!(bits(&v), bits(&tv));
        }
        // Ties at the boundary go to the lowest flat index.
        let pre = Tensor::from_slice(&[1.0f32, 2.0, 2.0, 0.0, 2.0, 2.0]).view([2, 3]);
        let (_, rows, latents) = batch_top_k(&pre, 1).unwrap();
        assert_eq!((rows, latents), (vec![0, 0], vec![1, 2]));
    }

    #[test]
    fn codes_match_the_torch_path() {
        let pre = random(16, 128, 2);
        let ours = top_k_codes(&pre, 8).unwrap();
        let (v, i) = pre.topk(8, 1, true, true);
        assert!(ours.values.equal(&v.relu().reshape([-1])));
        assert!(ours.latents.equal(&i.reshape([-1])));
        let batch = batch_top_k_codes(&pre, 8).unwrap();
        assert_eq!(batch.offsets.int64_value(&[16]), 128);
        assert_eq!(batch.rows.size(), [128]);
    }
}
