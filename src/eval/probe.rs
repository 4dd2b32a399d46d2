//! One-vs-rest logistic probes, trained for all classes at once (SAEBench's sparse
//! probing, multi-class): class c's probe reads its own features (the k latents chosen for
//! c) or features shared by every class (the raw activations). Training: features
//! standardised with the training rows' mean and deviation, class-balanced logistic loss
//! (each class's positives and negatives weigh one half each) plus `l2`·‖w‖²/2, full-batch
//! Adam from zero weights (deterministic). Score: balanced accuracy on the held-out rows,
//! averaged over the classes with positives and negatives on both sides.

use tch::{Kind, Tensor};

/// Features of the rows.
pub enum Features {
    /// Every class reads the same features. [R, D]
    Shared(Tensor),
    /// Class c reads `x[c]`. [C, R, k]
    PerClass(Tensor),
}

/// Probe settings.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    pub steps: usize,
    pub lr: f64,
    pub l2: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            steps: 300,
            lr: 0.05,
            l2: 1e-3,
        }
    }
}

/// Standardise the last dimension with the statistics of the rows `train` (dim −2).
fn standardise(x: &Tensor, train: &Tensor) -> Tensor {
    let t = x.index_select(-2, train);
    let mean = t.mean_dim(-2, true, Kind::Float);
    let std = t.std_dim(-2, false, true).clamp_min(1e-6);
    (x - mean) / std
}

/// Logits [C, R] of weights `w` ([C, D] or [C, k]) and bias `b` [C].
fn logits(x: &Features, w: &Tensor, b: &Tensor) -> Tensor {
    match x {
        Features::Shared(x) => w.matmul(&x.tr()) + b.unsqueeze(1),
        Features::PerClass(x) => {
            (x * w.unsqueeze(1)).sum_dim_intlist(2, false, Kind::Float) + b.unsqueeze(1)
        }
    }
}

/// Train on `train` rows and return the mean held-out balanced accuracy (None when no
/// class can be scored). `labels` [R] i64 class per row.
pub fn balanced_accuracy(
    features: Features,
    labels: &Tensor,
    n_classes: i64,
    train: &Tensor,
    test: &Tensor,
    cfg: ProbeConfig,
) -> Option<f64> {
    let _guard = tch::no_grad_guard();
    let features = match features {
        Features::Shared(x) => Features::Shared(standardise(&x.to_kind(Kind::Float), train)),
        Features::PerClass(x) => Features::PerClass(standardise(&x.to_kind(Kind::Float), train)),
    };
    let d = match &features {
        Features::Shared(x) => x.size()[1],
        Features::PerClass(x) => x.size()[2],
    };
    let device = labels.device();
    let classes = Tensor::arange(n_classes, (Kind::Int64, device)).unsqueeze(1);
    let y = labels.unsqueeze(0).eq_tensor(&classes).to_kind(Kind::Float); // C, R
    let in_train =
        Tensor::zeros([labels.size()[0]], (Kind::Float, device)).index_fill(0, train, 1.0);
    let pos = (&y * &in_train).sum_dim_intlist(1, true, Kind::Float); // C, 1
    let neg = ((-&y + 1.0) * &in_train).sum_dim_intlist(1, true, Kind::Float);
    let weight =
        (&y * (0.5 / pos.clamp_min(1.0)) + (-&y + 1.0) * (0.5 / neg.clamp_min(1.0))) * &in_train;
    let mut w = Tensor::zeros([n_classes, d], (Kind::Float, device));
    let mut b = Tensor::zeros([n_classes], (Kind::Float, device));
    let (mut mw, mut vw) = (w.zeros_like(), w.zeros_like());
    let (mut mb, mut vb) = (b.zeros_like(), b.zeros_like());
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8);
    for step in 1..=cfg.steps {
        let z = logits(&features, &w, &b);
        let g = (z.sigmoid() - &y) * &weight; // C, R
        let gw = match &features {
            Features::Shared(x) => g.matmul(x),
            Features::PerClass(x) => (g.unsqueeze(2) * x).sum_dim_intlist(1, false, Kind::Float),
        } + &w * cfg.l2;
        let gb = g.sum_dim_intlist(1, false, Kind::Float);
        let c1 = 1.0 - beta1.powi(step as i32);
        let c2 = 1.0 - beta2.powi(step as i32);
        mw = &mw * beta1 + &gw * (1.0 - beta1);
        vw = &vw * beta2 + gw.square() * (1.0 - beta2);
        mb = &mb * beta1 + &gb * (1.0 - beta1);
        vb = &vb * beta2 + gb.square() * (1.0 - beta2);
        w = &w - (&mw / c1) / ((&vw / c2).sqrt() + eps) * cfg.lr;
        b = &b - (&mb / c1) / ((&vb / c2).sqrt() + eps) * cfg.lr;
    }
    let z = logits(&features, &w, &b).index_select(1, test); // C, T
    let yt = y.index_select(1, test);
    let hit = z
        .gt(0.0)
        .to_kind(Kind::Float)
        .eq_tensor(&yt)
        .to_kind(Kind::Float);
    let tp = (&hit * &yt).sum_dim_intlist(1, false, Kind::Double);
    let tn = (&hit * (-&yt + 1.0)).sum_dim_intlist(1, false, Kind::Double);
    let p_test = yt.sum_dim_intlist(1, false, Kind::Double);
    let n_test = (-&yt + 1.0).sum_dim_intlist(1, false, Kind::Double);
    let (tp, tn, p_test, n_test) = (
        Vec::<f64>::try_from(tp).ok()?,
        Vec::<f64>::try_from(tn).ok()?,
        Vec::<f64>::try_from(p_test).ok()?,
        Vec::<f64>::try_from(n_test).ok()?,
    );
    let pos = Vec::<f32>::try_from(pos.reshape([-1])).ok()?;
    let neg = Vec::<f32>::try_from(neg.reshape([-1])).ok()?;
    let scored: Vec<f64> = (0..n_classes as usize)
        .filter(|&c| pos[c] > 0.0 && neg[c] > 0.0 && p_test[c] > 0.0 && n_test[c] > 0.0)
        .map(|c| 0.5 * (tp[c] / p_test[c] + tn[c] / n_test[c]))
        .collect();
    (!scored.is_empty()).then(|| scored.iter().sum::<f64>() / scored.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_classes_are_probed_perfectly() {
        // Class = which of 3 coordinates is large; plus noise coordinates.
        let (r, d) = (300i64, 6i64);
        let x = saeclip_rand(r, d);
        let labels = Tensor::arange(r, (Kind::Int64, tch::Device::Cpu)).remainder(3);
        let x = x + labels.one_hot(d) * 5.0;
        let train = Tensor::arange(200, (Kind::Int64, tch::Device::Cpu));
        let test = Tensor::arange_start(200, r, (Kind::Int64, tch::Device::Cpu));
        let acc = balanced_accuracy(
            Features::Shared(x.shallow_clone()),
            &labels,
            3,
            &train,
            &test,
            ProbeConfig::default(),
        )
        .unwrap();
        assert!(acc > 0.99, "{acc}");
        // Per-class features: class c reads only a noise column → chance level.
        let noise = x.narrow(1, 5, 1).unsqueeze(0).expand([3, r, 1], false);
        let acc = balanced_accuracy(
            Features::PerClass(noise),
            &labels,
            3,
            &train,
            &test,
            ProbeConfig::default(),
        )
        .unwrap();
        assert!(acc < 0.7, "{acc}");
    }

    fn saeclip_rand(r: i64, d: i64) -> Tensor {
        crate::rng::seeded(3, || Tensor::randn([r, d], (Kind::Float, tch::Device::Cpu)))
    }
}
