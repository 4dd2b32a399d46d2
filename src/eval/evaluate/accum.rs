//! `evaluate`'s running state: the images of the pass and, per SAE, its running sums, its
//! sparse per-image scores, its top-k buffers, its probe rows and its zero-shot tally.

use std::collections::BTreeMap;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{Member, LABEL_TOP};
use crate::data::ProceduralFactors;
use crate::eval::auroc::{sparse_rows, SparseScores};
use crate::eval::localisation::PatchScores;
use crate::interpret::topk::{BatchScores, TopK};
use crate::sae::{Evr, Sae};

/// The images of the pass, in the order they were evaluated.
#[derive(Default)]
pub(super) struct Images {
    /// Dataset (or cache) image index.
    pub(super) index: Vec<usize>,
    /// Class, −1 without.
    pub(super) label: Vec<i64>,
    pub(super) factors: Vec<Option<ProceduralFactors>>,
    /// The dataset's class-map classes (empty without class maps: a cache, most datasets).
    pub(super) regions: Vec<String>,
}

/// Running sums of one SAE.
pub(super) struct Accum {
    pub(super) evr: Evr,
    pub(super) rows: usize,
    pub(super) cosine: f64,
    pub(super) nonzero: f64,
    /// Rows on which each latent fired. [F] i64
    pub(super) fired: Tensor,
    pub(super) store: SparseScores,
    /// Images beyond the entry cap (not in the store).
    pub(super) dropped: usize,
    pub(super) top: Option<TopK>,
    /// Per-image feature of the probe images (CLS row or mean over tokens), by eval index.
    pub(super) probe_x: BTreeMap<usize, Tensor>,
    pub(super) zs: ZeroTally,
    /// Per-patch scores for the localisation probe (a patch-token SAE on a dataset with
    /// class maps).
    pub(super) patches: Option<PatchScores>,
}

#[derive(Default, Clone)]
pub(super) struct ZeroTally {
    pub(super) n: usize,
    pub(super) clip: usize,
    pub(super) sae: usize,
    pub(super) zero: usize,
    pub(super) mean: usize,
    pub(super) kl: f64,
    pub(super) kl_zero: f64,
}

impl Accum {
    pub(super) fn new(sae: &Sae, with_top: bool) -> Accum {
        let device = sae.device();
        Accum {
            evr: Evr::new(sae.config.d_in, device),
            rows: 0,
            cosine: 0.0,
            nonzero: 0.0,
            fired: Tensor::zeros([sae.config.d_sae], (Kind::Int64, device)),
            store: SparseScores::new(),
            dropped: 0,
            top: with_top.then(|| TopK::new(sae.config.d_sae, LABEL_TOP, device)),
            probe_x: BTreeMap::new(),
            zs: ZeroTally::default(),
            patches: None,
        }
    }

    /// Rows `x` [R, D] of b images (`row_image` [R] in 0..b); `first` is the eval index
    /// of the batch's first image; `probe` [b] says which of them are probe images.
    /// Returns x̂ and the codes.
    pub(super) fn update(
        &mut self,
        m: &Member,
        x: &Tensor,
        row_image: &Tensor,
        first: usize,
        probe: &[bool],
        max_entries: usize,
    ) -> Result<(Tensor, crate::sae::Codes)> {
        let sae = &m.sae;
        let f = sae.config.d_sae;
        let b = probe.len() as i64;
        let x = x.to_device(sae.device()).to_kind(Kind::Float);
        let codes = sae.encode_sparse(&x, sae.inference_selection());
        let x_hat = sae.decode_sparse(&codes);
        self.evr.update(&x, &x_hat);
        let cos = (&x * &x_hat).sum_dim_intlist(1, false, Kind::Double)
            / (x.norm_scalaropt_dim(2, [1], false) * x_hat.norm_scalaropt_dim(2, [1], false))
                .clamp_min(1e-12)
                .to_kind(Kind::Double);
        self.cosine += cos.sum(Kind::Double).double_value(&[]);
        self.rows += x.size()[0] as usize;
        let live = codes.values.gt(0.0);
        let latents = codes.latents.masked_select(&live);
        self.nonzero += latents.size()[0] as f64;
        let _ = self
            .fired
            .index_add_(0, &latents, &Tensor::ones_like(&latents));
        // Per-image scores: max over the image's rows.
        let row_image = row_image.to_device(sae.device());
        let flat = row_image.index_select(0, &codes.rows) * f + &codes.latents;
        let scores = Tensor::zeros([b * f], (Kind::Float, sae.device()))
            .internal_scatter_reduce(0, &flat, &codes.values.to_kind(Kind::Float), "amax", true)
            .view([b, f]);
        if let Some(top) = &mut self.top {
            let token = scores.gt(0.0).to_kind(Kind::Int64) - 1;
            top.update(
                &BatchScores {
                    scores: scores.shallow_clone(),
                    token,
                },
                &(first..first + probe.len()).collect::<Vec<_>>(),
            )?;
        }
        for entries in sparse_rows(&scores)? {
            if self.dropped == 0 && self.store.entries() + entries.len() <= max_entries {
                self.store.push(entries);
            } else {
                self.dropped += 1;
            }
        }
        if probe.iter().any(|&p| p) {
            let d = x.size()[1];
            let sums =
                Tensor::zeros([b, d], (Kind::Float, sae.device())).index_add(0, &row_image, &x);
            let counts = Tensor::zeros([b], (Kind::Float, sae.device())).index_add(
                0,
                &row_image,
                &Tensor::ones_like(&row_image).to_kind(Kind::Float),
            );
            let means = (sums / counts.clamp_min(1.0).unsqueeze(1)).to_device(Device::Cpu);
            for (i, _) in probe.iter().enumerate().filter(|(_, &p)| p) {
                self.probe_x.insert(first + i, means.get(i as i64));
            }
        }
        Ok((x_hat, codes))
    }
}
