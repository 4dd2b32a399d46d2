//! The training loss, its gradients written by hand, and the metrics
//! (saev src/saev/nn/objectives.py: loss terms and their metrics in one place).
//!
//! # Loss (scaled space x_s = x·s, x̂_s = z·W_dec + b_dec, e = x_s − x̂_s)
//! - `mse` = Σ_i ‖e_i‖² / (B·D·σ²): the mean over all B·D elements, like torch's
//!   `F.mse_loss`, divided by σ² = [`LossOptions::data_variance`], the per-element variance
//!   of the training data (in the scaled space) measured once before training
//!   ([`data_variance`]). So the loss is a fraction of unexplained variance (1 for the
//!   constant prediction x̄, 0 for a perfect one) whatever the data's scale and mean, and
//!   `aux_coef`, `adam_eps` and `grad_clip` mean the same on every dataset. OpenAI's
//!   trainer divides by each batch's own variance instead; a fixed σ² gives the same scale
//!   without making a loss depend on the batch (a one-row batch has no variance).
//!   σ² = 1 gives the plain mean squared error. (SAELens sums over D and means over the
//!   batch, without σ².)
//! - `aux` (AuxK, Gao et al. 2024) = aux_coef · ‖e − ê‖² / ‖e − ē‖², sums over the whole
//!   batch, ē the batch mean of e, ê = z_aux·W_dec (no bias), z_aux the k_aux largest
//!   ReLU'd pre-activations per row among the latents flagged dead (the training loop flags
//!   those silent for a whole window: [`DeadTracker::auxk_mask`]). e is a constant here
//!   (no gradient flows through it). Zero when no latent is dead, and for a batch of fewer
//!   than two rows (whose e has no variance to normalise by: that batch trains on `mse`
//!   alone). Unlike SAELens, the auxiliary pre-activations go through ReLU (a latent whose
//!   pre-activations are all negative gets no auxiliary gradient), and there is no
//!   dead-count scale factor.
//! - `l1` (relu only) = l1_coef · mean_i Σ_j z_ij·‖W_dec[j]‖.
//! - `loss` = mse + aux + l1.
//!
//! # Gradients
//! For topk and batchtopk nothing of size [B, F] is touched after the encoder's matmul and
//! top-k (AuxK reads the dead latents' columns of pre), and no [N, D] gather (N = number of
//! code entries) is built. The entries are sorted
//! by latent once; then, with S the sparse codes (N entries):
//! - dvalues_e = W_dec[j_e]·dx̂_{i_e} (`_embedding_bag_per_sample_weights_backward`),
//! - dpre_e = dvalues_e·[value_e > 0] (ReLU; top-k's mask is the entry set itself),
//! - dW_dec = Sᵀ·dx̂, dW_encᵀ = dPREᵀ·x_c, db_enc = dPREᵀ·1: each row j of these is a
//!   weighted sum over latent j's entries, i.e. an `embedding_bag` sum whose bags are the
//!   latents (the same primitive decodes in the forward pass, bags = rows),
//! - db_dec = Σ_i dx̂_i − W_enc·db_enc (decoder side, then through x_c = x_s − b_dec).
//!
//! AuxK's entries are appended as rows B..2B with their own dê, so one sort and one sum per
//! gradient serve both terms.
//!
//! Host reads: on CUDA the step queues its kernels without waiting for the device (its
//! sync-free form: AuxK over `where(dead, pre, −∞)`, offsets by `searchsorted`, fired
//! counts by `index_add`); on the CPU it takes the host form, whose data-dependent shapes
//! are cheaper there. Both give the same results; [`Workspace::with_sync_free`] picks one,
//! and each host read of the host form goes through [`super::sync::host_read`].
//!
//! Determinism: on CPU each output element of these primitives is summed by one thread in
//! entry order, so a fixed seed repeats bit for bit. On CUDA not every kernel involved is
//! guaranteed deterministic: expect close, not always bit-identical, reruns.

use tch::{Device, Kind, Tensor};

pub use super::arch::batchtopk::ThresholdEstimator;
use super::arch::jumprelu;
use super::arch::matryoshka::prefix_decodes;
use super::codes::{decode_scaled, prefix_offsets, row_norms, Codes};
use super::model::{select_with, Architecture, Sae, Selection};
use super::step::{b_dec_grad, zero};
pub use super::step::{Grads, LossOptions, StepOutput};
use super::sync::{host_read, SyncFree};

/// σ² for [`LossOptions::data_variance`]: the mean over the D columns of the variance of
/// `sample` [N, D] times `input_scale`, i.e. Σ_i ‖x_i·s − x̄·s‖² / (N·D), in f64.
///
/// The fraction of variance a reconstruction leaves unexplained is then `mse` itself.
pub fn data_variance(sample: &Tensor, input_scale: f64) -> anyhow::Result<f64> {
    let (n, _) = sample
        .size2()
        .map_err(|_| anyhow::anyhow!("the variance sample must be a [N, d_in] matrix"))?;
    anyhow::ensure!(
        n >= 2,
        "the variance sample needs at least two rows, got {n}"
    );
    let x = sample.to_kind(Kind::Double) * input_scale;
    let v = x
        .var_dim(0, false, false)
        .mean(Kind::Double)
        .double_value(&[]);
    anyhow::ensure!(
        v.is_finite() && v > 0.0,
        "the training rows have no variance (σ² = {v}): every row is the same"
    );
    Ok(v)
}

/// Buffers that [`forward_backward`] reuses from step to step: the pre-activations [B, F]
/// and AuxK's [B, dead] slice of them. Fresh tensors that large are mapped anew by the
/// allocator and pay a page fault per 4 KiB on first touch, which costs a tenth of a step.
/// One workspace serves any batch size and SAE (it grows as needed).
///
/// It also holds which form of the step to run ([`SyncFree`], `Auto` from
/// [`Workspace::new`]: sync-free on CUDA, the host form on the CPU).
#[derive(Debug, Default)]
pub struct Workspace {
    pre: Option<Tensor>,
    dead_pre: Option<Tensor>,
    pub sync_free: SyncFree,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace::default()
    }

    /// A workspace that runs the given form of the step (tests force `Always` on the CPU).
    pub fn with_sync_free(sync_free: SyncFree) -> Workspace {
        Workspace {
            sync_free,
            ..Workspace::default()
        }
    }

    /// A [rows, cols] f32 buffer on `device`, reused when the last one was at least as large.
    fn pre(&mut self, rows: i64, cols: i64, device: Device) -> Tensor {
        match &self.pre {
            Some(t) if t.size()[0] >= rows && t.size()[1] == cols && t.device() == device => {
                t.narrow(0, 0, rows)
            }
            _ => {
                let t = Tensor::empty([rows, cols], (Kind::Float, device));
                self.pre = Some(t.shallow_clone());
                t
            }
        }
    }

    /// A buffer for `index_select_out`, emptied so that it may take any shape; its storage
    /// only grows.
    fn dead_pre(&mut self, device: Device) -> Tensor {
        match &self.dead_pre {
            Some(t) if t.device() == device => t.shallow_clone().resize_([0]),
            _ => {
                let t = Tensor::empty([0], (Kind::Float, device));
                self.dead_pre = Some(t.shallow_clone());
                t
            }
        }
    }
}

/// Loss and gradients for a batch x [B, D] (original space, any float dtype).
///
/// `dead` [F] bool flags the latents AuxK may use (see [`DeadTracker`]); None or no flag
/// set means no AuxK. Parameters are not changed. Reuse `workspace` across steps.
pub fn forward_backward(
    sae: &Sae,
    x: &Tensor,
    dead: Option<&Tensor>,
    o: &LossOptions,
    workspace: &mut Workspace,
) -> StepOutput {
    let _guard = tch::no_grad_guard();
    let (b, d) = x.size2().expect("the batch must be [B, d_in]");
    assert_eq!(
        d, sae.config.d_in,
        "the batch has width {d}, the SAE d_in = {}",
        sae.config.d_in
    );
    let xs = sae.scale_input(x); // [B, D]
    let xc = &xs - &sae.b_dec;
    let pre = workspace.pre(b, sae.config.d_sae, xs.device());
    let _ = sae.b_enc.addmm_out(&pre, &xc, &sae.w_enc); // [B, F]
    let ws = workspace;
    match sae.config.architecture {
        Architecture::Relu => relu_step(sae, &xs, &xc, &pre, dead, o, ws),
        Architecture::JumpRelu => {
            let theta = sae
                .jumprelu_threshold()
                .expect("a jumprelu SAE has thresholds");
            let params = sae.jumprelu.unwrap_or_default();
            jumprelu::step(sae.weights(), params, &theta, &xs, &xc, &pre, o)
        }
        _ => {
            let selection = sae.training_selection(o.k);
            let codes = select_with(&pre, selection, ws.sync_free.on(pre.device()));
            sparse_step(sae, &xs, &xc, &pre, codes, dead, o, ws)
        }
    }
}

/// AuxK's codes, dê [B, D] and its loss.
struct AuxK {
    codes: Codes,
    grad: Tensor,
    loss: Tensor,
}

fn aux_k(
    sae: &Sae,
    pre: &Tensor,
    e: &Tensor,
    dead: Option<&Tensor>,
    o: &LossOptions,
    ws: &mut Workspace,
) -> Option<AuxK> {
    let dead = dead?;
    // A batch of one row has no variance to normalise by: no AuxK (module docs).
    if o.k_aux <= 0 || o.aux_coef == 0.0 || e.size()[0] < 2 {
        return None;
    }
    assert_eq!(
        dead.size(),
        [sae.config.d_sae],
        "the dead mask must be [d_sae]"
    );
    let f = sae.config.d_sae;
    let (codes, any_dead) = if ws.sync_free.on(pre.device()) {
        // Every row keeps k_aux entries; those on live latents hold ReLU(−∞) = 0 and add
        // nothing to any sum. Without a dead latent the loss is multiplied by 0.
        let dead_only = pre.where_scalarother(&dead.unsqueeze(0), f64::NEG_INFINITY);
        let codes = select_with(&dead_only, Selection::TopK(o.k_aux.min(f)), true);
        (codes, Some(dead.any().to_kind(Kind::Float)))
    } else {
        let dead_latents = host_read("AuxK: the dead latents' ids", || dead.nonzero().view([-1]));
        let n_dead = dead_latents.size()[0];
        if n_dead == 0 {
            return None;
        }
        // [B, dead]
        let dead_pre = pre.index_select_out(&ws.dead_pre(pre.device()), 1, &dead_latents);
        let mut codes = select_with(&dead_pre, Selection::TopK(o.k_aux.min(n_dead)), false);
        codes.latents = dead_latents.index_select(0, &codes.latents);
        codes.d_sae = f;
        (codes, None)
    };
    let e_hat = decode_scaled(&sae.w_dec, &codes);
    let centered = e - e.mean_dim(0, true, Kind::Float);
    let total = centered.square().sum(Kind::Float).clamp_min(1e-30);
    let residual = e - e_hat;
    let mut loss = residual.square().sum(Kind::Float) / &total * o.aux_coef;
    if let Some(any) = any_dead {
        loss *= any;
    }
    let grad = residual * (-2.0 * o.aux_coef) / total;
    Some(AuxK { codes, grad, loss })
}

/// Σ_e values[e]·table[indices[e]] over each run `offsets[i]..offsets[i+1]` of entries:
/// `embedding_bag` in sum mode, which serves the forward (runs = rows, table = W_dec) and,
/// with entries sorted by latent, every backward product (runs = latents, table = dx̂ or
/// x_c). Each output row is summed by one thread in entry order. [runs, table width]
fn bag_sum(table: &Tensor, indices: &Tensor, offsets: &Tensor, values: &Tensor) -> Tensor {
    let (out, _, _, _) =
        Tensor::embedding_bag(table, indices, offsets, false, 0, false, Some(values), true);
    out
}

/// The order of entries by latent, then by column (< `n_cols`). Each (latent, column) pair
/// occurs at most once, so the combined key is unique and any sort gives this one order.
/// (libtorch's CPU sort of 64-bit keys spanning only [0, F) is ~200× slower than of the
/// wider combined keys.)
fn by_latent_then_column(latents: &Tensor, cols: &Tensor, n_cols: i64) -> Tensor {
    (latents * n_cols + cols).argsort(0, false)
}

#[allow(clippy::too_many_arguments)]
fn sparse_step(
    sae: &Sae,
    xs: &Tensor,
    xc: &Tensor,
    pre: &Tensor,
    codes: Codes,
    dead: Option<&Tensor>,
    o: &LossOptions,
    ws: &mut Workspace,
) -> StepOutput {
    let b = codes.batch_size();
    let f = sae.config.d_sae;
    let d = sae.config.d_in;
    let sync_free = ws.sync_free.on(xs.device());
    // The prefixes (matryoshka; one prefix of all latents otherwise) and each entry's block.
    let (weights, blocks) = match (&sae.matryoshka, sae.config.architecture) {
        (Some(m), Architecture::Matryoshka) => (m.weights.clone(), Some(m.blocks(&codes.latents))),
        _ => (vec![1.0], None),
    };
    let n_prefix = weights.len();
    let decodes = match &blocks {
        Some(bl) => prefix_decodes(&sae.w_dec, &codes, bl, n_prefix),
        None => vec![decode_scaled(&sae.w_dec, &codes)],
    };
    let xs_hats: Vec<Tensor> = decodes.into_iter().map(|t| t + &sae.b_dec).collect(); // M·[B, D]
    let xs_hat = xs_hats[n_prefix - 1].shallow_clone();
    let e = xs - &xs_hat;
    let mse = e.square().mean(Kind::Float) / o.data_variance;
    // ∂loss/∂x̂_m, then G_p = Σ_{m ≥ p} of them (matryoshka module docs). [B, D] each
    let mut recon_loss = Tensor::zeros([], (Kind::Float, xs.device()));
    let mut suffix: Vec<Tensor> = Vec::with_capacity(n_prefix);
    for (m, x_hat_m) in xs_hats.iter().enumerate().rev() {
        let lambda = weights[m];
        let e_m = if m + 1 == n_prefix {
            e.shallow_clone()
        } else {
            xs - x_hat_m
        };
        if m + 1 == n_prefix && n_prefix == 1 {
            recon_loss = mse.shallow_clone();
        } else {
            recon_loss += e_m.square().mean(Kind::Float) / o.data_variance * lambda;
        }
        let g = &e_m * (-2.0 * lambda / ((b * d) as f64 * o.data_variance));
        suffix.push(match suffix.last() {
            Some(next) => g + next,
            None => g,
        });
    }
    suffix.reverse();
    let dx_hat = if n_prefix == 1 {
        suffix.pop().expect("one prefix")
    } else {
        Tensor::cat(&suffix, 0) // [M·B, D]
    };
    let aux = aux_k(sae, pre, &e, dead, o, ws);

    // All entries, main then AuxK's (AuxK's as columns M·B..M·B+B), sorted by latent then
    // column: every sum below runs in this fixed order. Column = block·B + row.
    let main_cols = match &blocks {
        Some(bl) => bl * b + &codes.rows,
        None => codes.rows.shallow_clone(),
    };
    let n_main = n_prefix as i64 * b;
    let (latents, cols, rows, values, grad_out, n_cols) = match &aux {
        None => (
            codes.latents.shallow_clone(),
            main_cols,
            codes.rows.shallow_clone(),
            codes.values.shallow_clone(),
            dx_hat.shallow_clone(),
            n_main,
        ),
        Some(a) => (
            Tensor::cat(&[&codes.latents, &a.codes.latents], 0),
            Tensor::cat(&[&main_cols, &(&a.codes.rows + n_main)], 0),
            Tensor::cat(&[&codes.rows, &a.codes.rows], 0),
            Tensor::cat(&[&codes.values, &a.codes.values], 0),
            Tensor::cat(&[&dx_hat, &a.grad], 0),
            n_main + b,
        ),
    };
    let order = by_latent_then_column(&latents, &cols, n_cols);
    let latents = latents.index_select(0, &order);
    let cols = cols.index_select(0, &order);
    let rows = rows.index_select(0, &order);
    let values = values.index_select(0, &order);
    let by_latent = prefix_offsets(&latents, f, sync_free); // [F+1]
    let empty = Tensor::empty([0], (Kind::Int64, latents.device()));
    let dvalues = Tensor::internal_embedding_bag_per_sample_weights_backward(
        &grad_out, &sae.w_dec, &latents, &empty, &cols, 0, -1,
    );
    let dpre = dvalues * values.gt(0.0);
    let w_dec = bag_sum(&grad_out, &cols, &by_latent, &values); // [F, D]
    let w_enc = bag_sum(xc, &rows, &by_latent, &dpre).tr(); // [D, F], the encoder layout
    let ones = Tensor::ones([b, 1], (Kind::Float, xs.device()));
    let b_enc = bag_sum(&ones, &rows, &by_latent, &dpre).view([f]);
    // b_dec is in every prefix: Σ_m ∂loss/∂x̂_m = G_0, the first B rows.
    let b_dec = b_dec_grad(&sae.w_enc, &dx_hat.narrow(0, 0, b), &b_enc);

    let aux_loss = aux
        .as_ref()
        .map_or_else(|| zero(xs.device()), |a| a.loss.shallow_clone());
    let prefix_x_hat = if blocks.is_some() {
        xs_hats.iter().map(|t| t / sae.input_scale).collect()
    } else {
        Vec::new()
    };
    StepOutput {
        loss: &recon_loss + &aux_loss,
        mse,
        aux: aux_loss,
        l1: zero(xs.device()),
        l0: codes.l0(),
        grads: Grads {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            threshold_param: None,
        },
        fired: codes.fired_with(sync_free),
        min_positive: codes.min_positive(),
        x_hat: xs_hat / sae.input_scale,
        prefix_x_hat,
    }
}

fn relu_step(
    sae: &Sae,
    xs: &Tensor,
    xc: &Tensor,
    pre: &Tensor,
    dead: Option<&Tensor>,
    o: &LossOptions,
    ws: &mut Workspace,
) -> StepOutput {
    let (b, d) = xs.size2().expect("[B, D]");
    let f = sae.config.d_sae;
    let device = xs.device();
    let z = pre.relu(); // [B, F]
    let xs_hat = sae.b_dec.addmm(&z, &sae.w_dec);
    let e = xs - &xs_hat;
    let mse = e.square().mean(Kind::Float) / o.data_variance;
    let dx_hat = &e * (-2.0 / ((b * d) as f64 * o.data_variance));
    let mut dz = dx_hat.mm(&sae.w_dec.tr()); // [B, F]
    let mut w_dec = z.tr().mm(&dx_hat); // [F, D]
    let l1 = if o.l1_coef != 0.0 {
        let norms = row_norms(&sae.w_dec); // [F]
        let per_latent = z.sum_dim_intlist(0, false, Kind::Float); // Σ_i z_ij
        let c = o.l1_coef / b as f64;
        let _ = dz.g_add_(&(&norms * c));
        let _ =
            w_dec.g_add_(&((&per_latent * c / norms.clamp_min(1e-12)).unsqueeze(1) * &sae.w_dec));
        per_latent.dot(&norms) * c
    } else {
        zero(device)
    };
    let dpre = dz * pre.gt(0.0);
    let aux = aux_k(sae, pre, &e, dead, o, ws);
    if let Some(a) = &aux {
        let c = &a.codes;
        let dvalues = Tensor::internal_embedding_bag_per_sample_weights_backward(
            &a.grad, &sae.w_dec, &c.latents, &c.offsets, &c.rows, 0, -1,
        );
        let dpre_aux = dvalues * c.values.gt(0.0);
        let order = by_latent_then_column(&c.latents, &c.rows, b);
        let sync_free = ws.sync_free.on(device);
        let by_latent = prefix_offsets(&c.latents.index_select(0, &order), f, sync_free);
        let rows = c.rows.index_select(0, &order);
        let _ = w_dec.g_add_(&bag_sum(
            &a.grad,
            &rows,
            &by_latent,
            &c.values.index_select(0, &order),
        ));
        let _ = dpre
            .view([-1])
            .index_add_(0, &(&c.rows * f + &c.latents), &dpre_aux);
    }
    let w_enc = dpre.tr().mm(xc).tr(); // [D, F], the encoder layout
    let b_enc = dpre.sum_dim_intlist(0, false, Kind::Float);
    let b_dec = b_dec_grad(&sae.w_enc, &dx_hat, &b_enc);
    let aux_loss = aux
        .as_ref()
        .map_or_else(|| zero(device), |a| a.loss.shallow_clone());
    let active = z.gt(0.0);
    StepOutput {
        loss: &mse + &aux_loss + &l1,
        mse,
        aux: aux_loss,
        l1,
        l0: active.sum(Kind::Float) / b as f64,
        grads: Grads {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            threshold_param: None,
        },
        fired: active.sum_dim_intlist(0, false, Kind::Int64),
        min_positive: Tensor::full([], f64::INFINITY, (Kind::Float, device)),
        x_hat: xs_hat / sae.input_scale,
        prefix_x_hat: Vec::new(),
    }
}

/// Which latents count as dead: those that fired in none of the last W rows, where
/// W = min(`training.dead_window`, the rows of one epoch, the rows seen so far).
///
/// The epoch bound makes a latent that stayed silent for a whole pass over the data count
/// as dead even when the configured window is longer than the data (a 1,000,000-row
/// window over Food-101's 72k CLS rows would otherwise never flag one, and AuxK would
/// never act); the rows-seen bound makes the count honest before W rows have passed (dead
/// = never fired so far). Before the first row nothing is dead.
///
/// AuxK trains only the latents silent for a whole window ([`DeadTracker::auxk_mask`]), as
/// OpenAI's and SAELens's trainers do: a latent that has not fired in the first few
/// batches is not yet dead, and training it towards the residual then only perturbs a
/// dictionary that is still forming.
#[derive(Debug)]
pub struct DeadTracker {
    /// Rows seen since each latent last fired (at most `rows_seen`). [F] i64
    pub rows_since_fired: Tensor,
    /// min(`training.dead_window`, rows per epoch).
    pub window: i64,
    /// Training rows seen so far.
    pub rows_seen: i64,
}

impl DeadTracker {
    pub fn new(d_sae: i64, window: i64, device: Device) -> DeadTracker {
        DeadTracker {
            rows_since_fired: Tensor::zeros([d_sae], (Kind::Int64, device)),
            window,
            rows_seen: 0,
        }
    }

    /// Fold in a batch of `rows` rows with per-latent firing counts `fired` [F].
    pub fn update(&mut self, fired: &Tensor, rows: i64) {
        self.rows_since_fired = (&self.rows_since_fired + rows).where_scalarother(&fired.eq(0), 0);
        self.rows_seen += rows;
    }

    /// The window in force now: min(window, rows seen); 0 before the first row.
    pub fn current_window(&self) -> i64 {
        self.window.min(self.rows_seen)
    }

    /// [F] bool
    pub fn mask(&self) -> Tensor {
        match self.current_window() {
            0 => self.rows_since_fired.zeros_like().to_kind(Kind::Bool),
            w => self.rows_since_fired.ge(w),
        }
    }

    /// The latents AuxK trains: silent for a whole window of min(`training.dead_window`, rows
    /// per epoch) rows, so none before that many rows have been seen. [F] bool
    pub fn auxk_mask(&self) -> Tensor {
        self.rows_since_fired.ge(self.window.max(1))
    }

    /// Share of dead latents. 0-dim f32
    pub fn dead_fraction(&self) -> Tensor {
        self.mask().to_kind(Kind::Float).mean(Kind::Float)
    }
}

/// Explained variance over a whole set, in the original space, accumulated on the device in
/// f64 (DESIGN.md "Metrics"):
/// - `evr` = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean of the whole set, from per-column
///   Σ(x − x̂)², Σx, Σx² and n in one pass;
/// - `evr_seed` = the original project's formula: per batch
///   1 − mean_j Var_i(x − x̂)_ij / mean_j Var_i(x)_ij with the unbiased variance (torch.var's
///   default), averaged over batches; batches of one row are left out.
#[derive(Debug)]
pub struct Evr {
    /// Per-column Σ(x − x̂)², Σx and Σx². [D] f64
    pub sq_err: Tensor,
    pub sum: Tensor,
    pub sum_sq: Tensor,
    pub rows: i64,
    /// Σ over batches of the per-batch `evr_seed`. [] f64
    pub seed_sum: Tensor,
    pub seed_batches: i64,
}

impl Evr {
    pub fn new(d_in: i64, device: Device) -> Evr {
        let zeros = || Tensor::zeros([d_in], (Kind::Double, device));
        Evr {
            sq_err: zeros(),
            sum: zeros(),
            sum_sq: zeros(),
            rows: 0,
            seed_sum: Tensor::zeros([], (Kind::Double, device)),
            seed_batches: 0,
        }
    }

    /// Add a batch: x and its reconstruction x̂, both [B, D].
    pub fn update(&mut self, x: &Tensor, x_hat: &Tensor) {
        let x = x.to_kind(Kind::Double);
        let r = &x - x_hat.to_kind(Kind::Double);
        let col_sum = |t: &Tensor| t.sum_dim_intlist(0, false, Kind::Double);
        self.sq_err += col_sum(&r.square());
        self.sum += col_sum(&x);
        self.sum_sq += col_sum(&x.square());
        let b = x.size()[0];
        self.rows += b;
        if b >= 2 {
            let var = |t: &Tensor| t.var_dim(0, true, false).mean(Kind::Double);
            self.seed_sum += 1.0 - var(&r) / var(&x);
            self.seed_batches += 1;
        }
    }

    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// NaN before any row.
    pub fn evr(&self) -> f64 {
        let n = self.rows as f64;
        let total = (&self.sum_sq - self.sum.square() / n).sum(Kind::Double);
        1.0 - self.sq_err.sum(Kind::Double).double_value(&[]) / total.double_value(&[])
    }

    /// NaN before any batch of two rows or more.
    pub fn evr_seed(&self) -> f64 {
        self.seed_sum.double_value(&[]) / self.seed_batches as f64
    }
}

/// Per-latent firing counts over a set: l0 and the share of latents that never fired.
#[derive(Debug)]
pub struct Firing {
    /// [F] i64
    pub counts: Tensor,
    pub rows: i64,
}

impl Firing {
    pub fn new(d_sae: i64, device: Device) -> Firing {
        Firing {
            counts: Tensor::zeros([d_sae], (Kind::Int64, device)),
            rows: 0,
        }
    }

    /// Add a batch of `rows` rows with per-latent counts `fired` [F] (`Codes::fired`,
    /// `StepOutput::fired`).
    pub fn update(&mut self, fired: &Tensor, rows: i64) {
        self.counts += fired;
        self.rows += rows;
    }

    /// Mean positive latents per row.
    pub fn l0(&self) -> f64 {
        self.counts.sum(Kind::Double).double_value(&[]) / self.rows as f64
    }

    /// Share of latents that never fired.
    pub fn dead_fraction(&self) -> f64 {
        self.counts
            .eq(0)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_estimator_mean_and_ema() {
        let t = |v: f32| Tensor::from(v);
        let mut mean = ThresholdEstimator::new(None, Device::Cpu);
        let mut ema = ThresholdEstimator::new(Some(0.5), Device::Cpu);
        assert_eq!(mean.value(), None);
        for v in [1.0, f32::INFINITY, 3.0] {
            mean.update(&t(v));
            ema.update(&t(v));
        }
        assert!((mean.value().unwrap() - 2.0).abs() < 1e-12);
        // debiased: (0.5·1·0.5 + 0.5·3) / (0.5·0.5 + 0.5) = 1.75 / 0.75
        assert!((ema.value().unwrap() - 1.75 / 0.75).abs() < 1e-12);
    }

    #[test]
    fn dead_tracker_window() {
        let mut t = DeadTracker::new(3, 10, Device::Cpu);
        let mask = |t: &DeadTracker| Vec::<bool>::try_from(t.mask()).unwrap();
        assert_eq!(
            mask(&t),
            vec![false; 3],
            "nothing is dead before the first row"
        );
        let auxk = |t: &DeadTracker| Vec::<bool>::try_from(t.auxk_mask()).unwrap();
        assert_eq!(auxk(&t), vec![false; 3]);
        t.update(&Tensor::from_slice(&[1i64, 0, 0]), 6);
        // 6 rows seen, fewer than the window: dead = never fired so far, but AuxK waits
        // for a whole window.
        assert_eq!(t.current_window(), 6);
        assert_eq!(mask(&t), vec![false, true, true]);
        assert_eq!(auxk(&t), vec![false; 3], "AuxK acts before a whole window");
        t.update(&Tensor::from_slice(&[0i64, 2, 0]), 6);
        assert_eq!(t.current_window(), 10);
        assert_eq!(mask(&t), vec![false, false, true]);
        assert_eq!(auxk(&t), vec![false, false, true]);
        assert!((t.dead_fraction().double_value(&[]) - 1.0 / 3.0).abs() < 1e-6);
        t.update(&Tensor::from_slice(&[0i64, 0, 0]), 6);
        assert_eq!(mask(&t), vec![true, false, true]);
        assert_eq!(auxk(&t), vec![true, false, true]);
        // Silent for exactly one window (10 rows): dead for both.
        let mut t = DeadTracker::new(2, 10, Device::Cpu);
        t.update(&Tensor::from_slice(&[0i64, 1]), 9);
        assert_eq!(auxk(&t), vec![false, false]);
        t.update(&Tensor::from_slice(&[0i64, 0]), 1);
        assert_eq!(auxk(&t), vec![true, false]);
        assert_eq!(mask(&t), vec![true, false]);
    }
}
