//! Sparse latent codes ([`Codes`]: k entries per row in compressed-row form) and the
//! primitives every architecture decodes and normalises with. The lowest room of the SAE:
//! the architectures' selections ([`super::arch`]) produce these, [`super::model`] and
//! [`super::objective`] consume them.

use tch::{Kind, Tensor};

use super::sync::{host_read, SyncFree};

/// Sparse latent codes of a batch in compressed-row form: row i's entries are
/// `offsets[i]..offsets[i+1]` of `values` / `latents` / `rows`, in row order.
///
/// An entry may hold 0 (a row with fewer than k positive pre-activations keeps its k
/// slots); counts such as l0 only count positive values.
#[derive(Debug)]
pub struct Codes {
    /// Activations, ≥ 0. [N] f32
    pub values: Tensor,
    /// Latent of each entry. [N] i64
    pub latents: Tensor,
    /// Row of each entry, non-decreasing. [N] i64
    pub rows: Tensor,
    /// Start of each row's entries, then N. [B+1] i64
    pub offsets: Tensor,
    /// Number of latents (F).
    pub d_sae: i64,
}

impl Codes {
    /// Codes from entries in row order (`rows` non-decreasing); `sync_free` picks how the
    /// offsets are computed ([`prefix_offsets`]).
    pub fn from_entries(
        values: Tensor,
        latents: Tensor,
        rows: Tensor,
        batch: i64,
        d_sae: i64,
        sync_free: bool,
    ) -> Codes {
        let offsets = prefix_offsets(&rows, batch, sync_free);
        Codes {
            values,
            latents,
            rows,
            offsets,
            d_sae,
        }
    }

    /// Number of rows (B).
    pub fn batch_size(&self) -> i64 {
        self.offsets.size()[0] - 1
    }

    /// The dense codes. [B, F]
    pub fn to_dense(&self) -> Tensor {
        let (b, f) = (self.batch_size(), self.d_sae);
        let flat = &self.rows * f + &self.latents;
        Tensor::zeros([b * f], (self.values.kind(), self.values.device()))
            .index_add(0, &flat, &self.values)
            .view([b, f])
    }

    /// How many rows each latent is positive in. [F] i64
    pub fn fired(&self) -> Tensor {
        self.fired_with(SyncFree::Auto.on(self.values.device()))
    }

    /// [`Codes::fired`] in the sync-free form (the `values > 0` flags added into a zero
    /// [F] tensor) or the host form (`masked_select` + `bincount`); see [`super::sync`].
    pub fn fired_with(&self, sync_free: bool) -> Tensor {
        if sync_free {
            let flags = self.values.gt(0.0).to_kind(Kind::Int64);
            Tensor::zeros([self.d_sae], (Kind::Int64, self.values.device())).index_add(
                0,
                &self.latents,
                &flags,
            )
        } else {
            host_read(
                "Codes::fired: masked_select's length depends on the data",
                || {
                    self.latents
                        .masked_select(&self.values.gt(0.0))
                        .bincount::<Tensor>(None, self.d_sae)
                },
            )
        }
    }

    /// Mean number of positive latents per row. 0-dim f32
    pub fn l0(&self) -> Tensor {
        self.values.gt(0.0).sum(Kind::Float) / (self.batch_size().max(1) as f64)
    }

    /// The smallest positive activation; +∞ when there is none. 0-dim f32
    pub fn min_positive(&self) -> Tensor {
        let inf = Tensor::full([1], f64::INFINITY, (Kind::Float, self.values.device()));
        Tensor::cat(
            &[
                self.values
                    .where_scalarother(&self.values.gt(0.0), f64::INFINITY),
                inf,
            ],
            0,
        )
        .min()
    }
}

/// Start of each run of equal values in non-decreasing `ids` (values 0..n), then the
/// total: the first position of each id 0..=n in `ids`. Sync-free, a `searchsorted` of
/// 0..=n in `ids`; else `bincount` (which reads the largest id) and `cumsum`. [n+1] i64
pub fn prefix_offsets(ids: &Tensor, n: i64, sync_free: bool) -> Tensor {
    let device = ids.device();
    if sync_free {
        return Tensor::arange(n + 1, (Kind::Int64, device)).searchsorted(
            ids,
            false,
            false,
            "left",
            None::<Tensor>,
        );
    }
    let counts = host_read(
        "offsets: bincount sizes its output by the largest id",
        || ids.bincount::<Tensor>(None, n),
    );
    Tensor::cat(
        &[
            Tensor::zeros([1], (Kind::Int64, device)),
            counts.cumsum(0, Kind::Int64),
        ],
        0,
    )
}

/// Σ_j z_j·W_dec[j] over the entries of each row (no bias, scaled space). [B, D]
pub fn decode_scaled(w_dec: &Tensor, codes: &Codes) -> Tensor {
    let (out, _, _, _) = Tensor::embedding_bag(
        w_dec,
        &codes.latents,
        &codes.offsets,
        false,
        0, // sum
        false,
        Some(&codes.values),
        true, // offsets has B+1 entries
    );
    out
}

/// Divide each row of `w` by its norm (at least 1e-12), in place; `scratch`, shaped and laid
/// out like `w`, spares a temporary.
pub(crate) fn normalize_rows(w: &mut Tensor, scratch: Option<&Tensor>) {
    let squares = match scratch {
        Some(s) => w.square_out(s),
        None => w.square(),
    };
    let norms = squares
        .sum_dim_intlist(1, true, Kind::Float)
        .sqrt()
        .clamp_min(1e-12);
    let _ = w.g_div_(&norms);
}

/// ‖W[j]‖ for each row j. [F]
pub(crate) fn row_norms(w: &Tensor) -> Tensor {
    w.square().sum_dim_intlist(1, false, Kind::Float).sqrt()
}
