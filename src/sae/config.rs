//! The training configuration (`train --config YAML [--set key=value]...`): DESIGN.md
//! "Training config". Unknown keys are errors; every field has a default.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::model::{
    Architecture, BdecInit, DecoderNorm, JumpReluParams, MatryoshkaParams, MatryoshkaSelection,
    SparsityLoss, ThresholdParam, WEncInit,
};
use crate::clip::{Precision, Tokens};
use crate::data::Split;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub sae: SaeSection,
    pub training: TrainingSection,
    pub output: OutputSection,
    /// Dotted keys → lists of values: train every combination in one pass (see
    /// [`super::sweep`]). Empty (and not written) for a single configuration.
    #[serde(
        default,
        skip_serializing_if = "serde_yaml_ng::Mapping::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub sweep: serde_yaml_ng::Mapping,
}

/// `sweep:` or `sweep: null` as an empty sweep.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<serde_yaml_ng::Mapping, D::Error> {
    Ok(Option::<serde_yaml_ng::Mapping>::deserialize(d)?.unwrap_or_default())
}

/// Where the activations come from: an existing cache, or a model and dataset to extract
/// from first (a matching cache under `output.caches_dir` is reused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// One cache directory (or a folder of cache parts).
    pub cache: Option<PathBuf>,
    /// Several caches read as one.
    pub caches: Vec<PathBuf>,
    /// CLIP model to extract from when no cache is given.
    pub model: Option<PathBuf>,
    /// Dataset `KIND:PATH` to extract from when no cache is given.
    pub dataset: Option<String>,
    pub split: Split,
    pub layer: Option<usize>,
    pub tokens: Tokens,
    /// Only the first N images when extracting.
    pub limit: Option<usize>,
    /// Storage precision of an extracted cache.
    pub dtype: Precision,
    /// Share of images held out for validation (split by image, never by row).
    pub val_fraction: f64,
    /// How training reads the cache: all rows in memory, streamed from the shards, or
    /// `auto` (memory when the cache fits the budget of [`super::batches::memory_budget`]).
    pub load: DataLoad,
    /// Host memory for the shuffle buffer when streaming, in MiB.
    pub buffer_mb: usize,
}

/// `data.load`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataLoad {
    #[default]
    Auto,
    Memory,
    Stream,
}

impl DataLoad {
    pub fn name(self) -> &'static str {
        match self {
            DataLoad::Auto => "auto",
            DataLoad::Memory => "memory",
            DataLoad::Stream => "stream",
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            cache: None,
            caches: Vec::new(),
            model: None,
            dataset: None,
            split: Split::Train,
            layer: None,
            tokens: Tokens::Cls,
            limit: None,
            dtype: Precision::F16,
            val_fraction: 0.05,
            load: DataLoad::Auto,
            buffer_mb: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaeSection {
    pub architecture: Architecture,
    /// d_sae = expansion_factor × d_in, unless `d_sae` is given.
    pub expansion_factor: usize,
    pub d_sae: Option<usize>,
    /// Active latents per row (topk), or on average per row (batchtopk).
    pub k: i64,
    /// Latents used by the AuxK loss per row; default d_in / 2.
    pub k_aux: Option<i64>,
    pub aux_coef: f64,
    /// L1 coefficient (relu only).
    pub l1_coef: f64,
    pub b_dec_init: BdecInit,
    /// `transpose`: W_decᵀ exactly; `scaled_transpose`: W_decᵀ times the least-squares
    /// gain of the first reconstructions.
    pub w_enc_init: WEncInit,
    /// matryoshka: cumulative prefix widths, strictly increasing, the last = d_sae.
    pub matryoshka_widths: Option<Vec<i64>>,
    /// matryoshka: weight of each prefix's reconstruction loss (default 1 each).
    pub matryoshka_weights: Option<Vec<f64>>,
    /// matryoshka: `batchtopk` (default) or `topk` selection of the codes.
    pub matryoshka_selection: MatryoshkaSelection,
    /// matryoshka: `unit` (decoder rows kept at unit norm) or `free` (SAE-Lens's free rows).
    pub matryoshka_decoder_norm: DecoderNorm,
    /// jumprelu: bandwidth ε of the straight-through estimator's rectangle kernel.
    pub jumprelu_bandwidth: f64,
    /// jumprelu: θ of every latent at initialisation (scaled space).
    pub jumprelu_init_threshold: f64,
    /// jumprelu: `step` (L0, DeepMind) or `tanh` (Anthropic) sparsity penalty.
    pub jumprelu_sparsity_loss: SparsityLoss,
    /// jumprelu: c of the tanh penalty tanh(c·z·‖W_dec[j]‖).
    pub jumprelu_tanh_scale: f64,
    /// jumprelu: `linear` (θ itself, kept ≥ 0) or `log` (log θ) trained for the thresholds.
    pub jumprelu_threshold_param: ThresholdParam,
    /// jumprelu: coefficient λ of the sparsity penalty (warmed up over
    /// `training.l0_warmup_steps`).
    pub l0_coef: f64,
}

impl Default for SaeSection {
    fn default() -> Self {
        SaeSection {
            architecture: Architecture::TopK,
            expansion_factor: 32,
            d_sae: None,
            k: 64,
            k_aux: None,
            aux_coef: 1.0 / 32.0,
            l1_coef: 0.0,
            // The mean tied or beat the geometric median in the defaults sweep (report.md
            // section 3), and costs no Weiszfeld iterations.
            b_dec_init: BdecInit::Mean,
            w_enc_init: WEncInit::Transpose,
            matryoshka_widths: None,
            matryoshka_weights: None,
            matryoshka_selection: MatryoshkaSelection::BatchTopK,
            matryoshka_decoder_norm: DecoderNorm::Unit,
            // Rajamanoharan et al. 2024 (inputs normalised to E‖x‖² = D, as saeclip's scaled
            // space is).
            jumprelu_bandwidth: 0.001,
            jumprelu_init_threshold: 0.001,
            jumprelu_sparsity_loss: SparsityLoss::Step,
            jumprelu_tanh_scale: 4.0,
            // θ itself and λ = 0.01, from the λ sweep against SAE-Lens (bench/RESULTS.md
            // `jumprelu_sweep`, report.md "JumpReLU defaults"): log θ barely leaves a small
            // initial θ within a run; λ = 0.001 hardly sparsified.
            jumprelu_threshold_param: ThresholdParam::Linear,
            l0_coef: 1e-2,
        }
    }
}

/// `training.lr`, the peak learning rate: a number, or `auto` = 2e-4·√(16,384 / d_sae), the
/// rule Gao et al. (2024) fitted for top-k SAEs (the rate falls with the square root of the
/// width); the defaults sweep (bench/RESULTS.md "Training defaults") found the best rate of
/// those tried at 8e-4 for widths 512 and 1,024, where `auto` gives 1.1e-3 and 8e-4.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearningRate {
    Auto,
    Fixed(f64),
}

impl LearningRate {
    /// The rate for an SAE of `d_sae` latents.
    pub fn for_width(self, d_sae: i64) -> f64 {
        match self {
            LearningRate::Fixed(lr) => lr,
            LearningRate::Auto => 2e-4 * (16_384.0 / d_sae.max(1) as f64).sqrt(),
        }
    }
}

impl std::fmt::Display for LearningRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LearningRate::Auto => f.write_str("auto"),
            LearningRate::Fixed(lr) => write!(f, "{lr}"),
        }
    }
}

impl Serialize for LearningRate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            LearningRate::Auto => s.serialize_str("auto"),
            LearningRate::Fixed(lr) => s.serialize_f64(*lr),
        }
    }
}

impl<'de> Deserialize<'de> for LearningRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(lr) => Ok(LearningRate::Fixed(lr)),
            Raw::Text(t) if t == "auto" => Ok(LearningRate::Auto),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "expected a number or `auto`, found {t:?}"
            ))),
        }
    }
}

/// The learning-rate decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub batch_size: usize,
    /// Passes over the training rows (ignored when `steps` is set).
    pub epochs: usize,
    /// Total optimizer steps; overrides `epochs`.
    pub steps: Option<usize>,
    /// Peak learning rate (a number, or `auto`: see [`LearningRate`]).
    pub lr: LearningRate,
    pub lr_schedule: LrSchedule,
    pub lr_warmup_steps: usize,
    /// Final learning rate as a fraction of `lr` (cosine and linear decay).
    pub lr_end_fraction: f64,
    /// Cosine and linear: the decay runs over this last fraction of the steps after the
    /// warm-up, the rate held at its peak before it (1: decay over the whole run).
    pub lr_decay_fraction: f64,
    pub adam_betas: [f64; 2],
    pub adam_eps: f64,
    /// k at step 0, raised linearly to `sae.k` over `k_warmup_steps` (a real warm-up).
    pub k_start: Option<i64>,
    pub k_warmup_steps: usize,
    /// L1 coefficient raised linearly from 0 over this many steps (relu only).
    pub l1_warmup_steps: usize,
    /// `sae.l0_coef` raised linearly from 0 over this many steps (jumprelu only).
    pub l0_warmup_steps: usize,
    /// Global gradient-norm clip; 0 disables it.
    pub grad_clip: f64,
    pub seed: i64,
    /// Write a step line to metrics.jsonl every N steps.
    pub log_every: usize,
    /// A latent is dead when it has not fired over the last min(this, rows per epoch,
    /// rows seen) training rows; AuxK trains it once it has been silent for min(this, rows
    /// per epoch) rows.
    pub dead_window: usize,
    /// batchtopk: decay of the exponential moving average of each batch's smallest kept
    /// activation that becomes the inference threshold θ; the average starts after the k
    /// warm-up.
    pub threshold_decay: f64,
    /// Write a mid-epoch training checkpoint (`checkpoints/latest.safetensors`) every N
    /// steps; None (the default): checkpoints at epoch ends only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            batch_size: 4096,
            epochs: 10,
            steps: None,
            // Defaults chosen by the sweep on ground-truth data (bench/RESULTS.md "Training
            // defaults", report.md section 3): the rate that recovered the atoms best falls
            // with the width as `auto` does; a constant rate beat cosine and linear decay at
            // every budget measured, and a warm-up only cost steps.
            lr: LearningRate::Auto,
            lr_schedule: LrSchedule::Constant,
            lr_warmup_steps: 0,
            // Used when a decaying schedule is chosen: decay to 0.1 beat decay to 0.
            lr_end_fraction: 0.1,
            lr_decay_fraction: 1.0,
            adam_betas: [0.9, 0.999],
            adam_eps: 1e-8,
            k_start: None,
            k_warmup_steps: 0,
            l1_warmup_steps: 0,
            l0_warmup_steps: 0,
            grad_clip: 1.0,
            seed: 0,
            log_every: 50,
            dead_window: 1_000_000,
            threshold_decay: 0.99,
            checkpoint_every: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// Runs go to `<runs_dir>/<YYYYmmdd_HHMMSS>/`.
    pub runs_dir: PathBuf,
    /// Extracted caches go here when the config names a model and dataset.
    pub caches_dir: PathBuf,
    /// Exact run directory instead of a timestamped one.
    pub run_dir: Option<PathBuf>,
    /// A finished run's best SAE is copied to `<checkpoints_dir>/<run name>.safetensors`;
    /// default `checkpoints` beside `runs_dir` (or beside `run_dir`).
    pub checkpoints_dir: Option<PathBuf>,
}

impl OutputSection {
    /// Where finished runs publish their best SAE.
    pub fn checkpoints_dir(&self) -> PathBuf {
        if let Some(d) = &self.checkpoints_dir {
            return d.clone();
        }
        let beside = self.run_dir.as_ref().unwrap_or(&self.runs_dir);
        beside
            .parent()
            .map_or_else(|| PathBuf::from("checkpoints"), |p| p.join("checkpoints"))
    }
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            runs_dir: "runs".into(),
            caches_dir: "caches".into(),
            run_dir: None,
            checkpoints_dir: None,
        }
    }
}

impl TrainConfig {
    /// Read a YAML file and apply `key.path=value` overrides (values are YAML scalars).
    pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        TrainConfig::from_yaml(&text, overrides)
            .with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn from_yaml(text: &str, overrides: &[String]) -> Result<TrainConfig> {
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
        if value.is_null() {
            value = serde_yaml_ng::Value::Mapping(Default::default());
        }
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        // serde_path_to_error names the key of a type error (`training.epochs: invalid type`).
        let config: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                anyhow::anyhow!("{inner}")
            } else {
                anyhow::anyhow!("{path}: {inner}")
            }
        })?;
        Ok(config)
    }

    /// d_sae for inputs of width `d_in`.
    pub fn d_sae(&self, d_in: i64) -> i64 {
        self.sae
            .d_sae
            .map_or(d_in * self.sae.expansion_factor as i64, |d| d as i64)
    }

    pub fn k_aux(&self, d_in: i64) -> i64 {
        self.sae.k_aux.unwrap_or(d_in / 2)
    }

    /// Check values once the input width is known; errors name the key.
    pub fn validate(&self, d_in: i64) -> Result<()> {
        let d_sae = self.d_sae(d_in);
        let s = &self.sae;
        let t = &self.training;
        ensure!(
            d_sae > 0,
            "sae.d_sae / sae.expansion_factor must give a positive width, found {d_sae}"
        );
        ensure!(s.k > 0, "sae.k = {}: must be at least 1", s.k);
        ensure!(
            s.k <= d_sae,
            "sae.k = {} is larger than the SAE width d_sae = {d_sae}",
            s.k
        );
        let k_aux = self.k_aux(d_in);
        ensure!(
            k_aux >= 0 && k_aux <= d_sae,
            "sae.k_aux = {k_aux}: must lie in 0..={d_sae}"
        );
        ensure!(
            s.aux_coef >= 0.0,
            "sae.aux_coef = {}: must not be negative",
            s.aux_coef
        );
        ensure!(
            s.l1_coef >= 0.0,
            "sae.l1_coef = {}: must not be negative",
            s.l1_coef
        );
        self.jumprelu_params()?;
        ensure!(
            s.jumprelu_init_threshold > 0.0 && s.jumprelu_init_threshold.is_finite(),
            "sae.jumprelu_init_threshold = {}: must be positive",
            s.jumprelu_init_threshold
        );
        ensure!(
            s.l0_coef >= 0.0 && s.l0_coef.is_finite(),
            "sae.l0_coef = {}: must not be negative",
            s.l0_coef
        );
        if s.architecture == Architecture::Matryoshka {
            self.matryoshka_params(d_sae)?;
        }
        if let Some(k0) = t.k_start {
            ensure!(
                k0 > 0 && k0 <= d_sae,
                "training.k_start = {k0}: must lie in 1..={d_sae}"
            );
        }
        if let LearningRate::Fixed(lr) = t.lr {
            ensure!(
                lr > 0.0 && lr.is_finite(),
                "training.lr = {lr}: must be positive (or `auto`)"
            );
        }
        ensure!(t.batch_size > 0, "training.batch_size must be at least 1");
        ensure!(
            t.steps.is_some() || t.epochs > 0,
            "training.epochs must be at least 1 (or set training.steps)"
        );
        ensure!(t.steps != Some(0), "training.steps must be at least 1");
        ensure!(t.log_every > 0, "training.log_every must be at least 1");
        ensure!(t.dead_window > 0, "training.dead_window must be at least 1");
        ensure!(
            t.checkpoint_every != Some(0),
            "training.checkpoint_every must be at least 1 (or left out)"
        );
        ensure!(
            (0.0..1.0).contains(&t.threshold_decay),
            "training.threshold_decay = {}: must lie in [0, 1)",
            t.threshold_decay
        );
        ensure!(
            t.grad_clip >= 0.0,
            "training.grad_clip = {}: must not be negative",
            t.grad_clip
        );
        ensure!(
            (0.0..1.0).contains(&t.adam_betas[0]) && (0.0..1.0).contains(&t.adam_betas[1]),
            "training.adam_betas must lie in [0, 1)"
        );
        ensure!(t.adam_eps > 0.0, "training.adam_eps must be positive");
        ensure!(
            (0.0..=1.0).contains(&t.lr_end_fraction),
            "training.lr_end_fraction must lie in [0, 1]"
        );
        ensure!(
            t.lr_decay_fraction > 0.0 && t.lr_decay_fraction <= 1.0,
            "training.lr_decay_fraction = {}: must lie in (0, 1]",
            t.lr_decay_fraction
        );
        ensure!(
            (0.0..1.0).contains(&self.data.val_fraction),
            "data.val_fraction = {}: must lie in [0, 1)",
            self.data.val_fraction
        );
        ensure!(self.data.buffer_mb > 0, "data.buffer_mb must be at least 1");
        Ok(())
    }
}

impl TrainConfig {
    /// jumprelu's settings from `sae.jumprelu_*`; errors name the key.
    pub fn jumprelu_params(&self) -> Result<JumpReluParams> {
        let s = &self.sae;
        let p = JumpReluParams {
            bandwidth: s.jumprelu_bandwidth,
            sparsity_loss: s.jumprelu_sparsity_loss,
            tanh_scale: s.jumprelu_tanh_scale,
            threshold_param: s.jumprelu_threshold_param,
        };
        p.validate()?;
        Ok(p)
    }

    /// matryoshka's prefixes from `sae.matryoshka_*` for an SAE of `d_sae` latents; errors
    /// name the key.
    pub fn matryoshka_params(&self, d_sae: i64) -> Result<MatryoshkaParams> {
        let s = &self.sae;
        let widths = s.matryoshka_widths.clone().ok_or_else(|| {
            anyhow::anyhow!("sae.matryoshka_widths is required for sae.architecture = matryoshka: the cumulative prefix widths, ending at d_sae = {d_sae}")
        })?;
        MatryoshkaParams::new(
            widths,
            s.matryoshka_weights.clone(),
            s.matryoshka_selection,
            d_sae,
        )
        .map(|p| p.with_decoder_norm(s.matryoshka_decoder_norm))
    }
}

/// `a.b.c=value`: set a nested key, creating mappings on the way.
fn apply_override(root: &mut serde_yaml_ng::Value, assignment: &str) -> Result<()> {
    use serde_yaml_ng::Value;
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment:?}: expected key.path=value");
    };
    let value: Value = serde_yaml_ng::from_str(raw)
        .with_context(|| format!("--set {assignment:?}: cannot parse the value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    ensure!(
        parts.iter().all(|p| !p.is_empty()),
        "--set {assignment:?}: empty key"
    );
    let mut node = root;
    for part in &parts[..parts.len() - 1] {
        let Value::Mapping(map) = node else {
            bail!("--set {assignment:?}: {part} is not a section");
        };
        node = map
            .entry(Value::String(part.to_string()))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    let Value::Mapping(map) = node else {
        bail!(
            "--set {assignment:?}: the parent of {} is not a section",
            parts[parts.len() - 1]
        );
    };
    map.insert(Value::String(parts[parts.len() - 1].to_string()), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(
            TrainConfig::from_yaml("", &[]).unwrap(),
            TrainConfig::default()
        );
    }

    #[test]
    fn design_example_parses() {
        let yaml = "data:\n  cache: caches/x\n  val_fraction: 0.05\nsae:\n  architecture: topk\n  expansion_factor: 32\n  k: 64\n  k_aux: 384\n  aux_coef: 0.03125\n  l1_coef: 0.0\ntraining:\n  batch_size: 4096\n  epochs: 10\n  lr: 2.0e-4\n  lr_schedule: cosine\n  lr_warmup_steps: 100\n  k_start: 64\n  k_warmup_steps: 0\n  grad_clip: 1.0\n  seed: 0\n  log_every: 50\n  dead_window: 1000000\noutput:\n  runs_dir: runs\n";
        let c = TrainConfig::from_yaml(yaml, &[]).unwrap();
        assert_eq!(c.data.cache.as_deref(), Some(Path::new("caches/x")));
        assert_eq!(c.d_sae(768), 768 * 32);
        c.validate(768).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = TrainConfig::from_yaml("sae:\n  kk: 3\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("kk"), "{err:#}");
        let err = TrainConfig::from_yaml("", &["training.lrr=0.1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("lrr"), "{err:#}");
        let err = TrainConfig::from_yaml("training:\n  epochs: lots\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("training.epochs"), "{err:#}");
    }

    #[test]
    fn overrides_set_nested_values() {
        let c = TrainConfig::from_yaml(
            "training:\n  lr: 0.1\n",
            &[
                "training.lr=0.5".into(),
                "sae.k=8".into(),
                "sae.architecture=relu".into(),
                "data.cache=/x".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.training.lr, LearningRate::Fixed(0.5));
        assert_eq!(c.sae.k, 8);
        assert_eq!(c.sae.architecture, Architecture::Relu);
        assert!(TrainConfig::from_yaml("", &["training.lr".into()]).is_err());
        let err = TrainConfig::from_yaml("", &["training.lr=abc".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("training.lr"), "{err:#}");
        let auto = TrainConfig::from_yaml("", &["training.lr=auto".into()]).unwrap();
        assert_eq!(auto.training.lr, LearningRate::Auto);
        assert!((auto.training.lr.for_width(16_384) - 2e-4).abs() < 1e-15);
        assert!((auto.training.lr.for_width(1024) - 8e-4).abs() < 1e-15);
        // It writes back as it reads.
        let yaml = serde_yaml_ng::to_string(&auto).unwrap();
        assert_eq!(TrainConfig::from_yaml(&yaml, &[]).unwrap(), auto);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let check = |set: &str, expect: &str| {
            let c = TrainConfig::from_yaml("", &[set.into()]).unwrap();
            let err = c.validate(64).unwrap_err();
            assert!(format!("{err:#}").contains(expect), "{set}: {err:#}");
        };
        check("sae.k=0", "sae.k");
        check("sae.k=100000", "sae.k");
        check("training.lr=0", "training.lr");
        check("training.lr=-1", "training.lr");
        check("training.batch_size=0", "training.batch_size");
        check("data.val_fraction=1.5", "data.val_fraction");
        check("sae.jumprelu_bandwidth=0", "sae.jumprelu_bandwidth");
        check("sae.jumprelu_bandwidth=-0.5", "sae.jumprelu_bandwidth");
        check(
            "sae.jumprelu_init_threshold=0",
            "sae.jumprelu_init_threshold",
        );
        check("sae.l0_coef=-1", "sae.l0_coef");
        let m = |widths: &str, expect: &str| {
            let c = TrainConfig::from_yaml(
                "",
                &[
                    "sae.architecture=matryoshka".into(),
                    "sae.d_sae=256".into(),
                    "sae.k=8".into(),
                    format!("sae.matryoshka_widths={widths}"),
                ],
            )
            .unwrap();
            let err = c.validate(64).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("sae.matryoshka_widths"), "{widths}: {text}");
            assert!(text.contains(expect), "{widths}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        };
        m("[64, 32, 256]", "strictly increasing");
        m("[64, 64, 256]", "strictly increasing");
        m("[64, 128]", "d_sae = 256");
        m("[64, 128, 512]", "d_sae = 256");
        m("[]", "empty");
        let ok = TrainConfig::from_yaml(
            "",
            &[
                "sae.architecture=matryoshka".into(),
                "sae.d_sae=256".into(),
                "sae.matryoshka_widths=[32, 128, 256]".into(),
                "sae.k=8".into(),
            ],
        )
        .unwrap();
        ok.validate(64).unwrap();
        assert_eq!(ok.matryoshka_params(256).unwrap().weights, vec![1.0; 3]);
    }
}
