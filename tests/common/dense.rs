//! The SAE training loss computed densely with tch autograd: the independent
//! reference for the hand-written sparse gradients (tests/sae_core.rs) and the baseline
//! of the step-time benchmark (benches/sae_step.rs).

use saeclip::sae::{
    Architecture, LossOptions, MatryoshkaSelection, Sae, SparsityLoss, ThresholdParam,
};
use tch::Tensor;

/// Loss terms and the gradients of `W_enc`, `b_enc`, `W_dec`, `b_dec`.
pub struct Reference {
    pub loss: Tensor,
    pub mse: Tensor,
    pub aux: Tensor,
    pub l1: Tensor,
    pub grads: [Tensor; 4],
    /// jumprelu: the gradient of θ's parameter (log θ or θ).
    pub threshold_param: Option<Tensor>,
}

/// K(u) = [−½ < u < ½], detached.
fn rectangle(u: &Tensor) -> Tensor {
    u.gt(-0.5)
        .logical_and(&u.lt(0.5))
        .to_kind(u.kind())
        .detach()
}

/// The same loss with dense codes and tch autograd.
pub fn dense_reference(sae: &Sae, x: &Tensor, dead: Option<&Tensor>, o: &LossOptions) -> Reference {
    let p: Vec<Tensor> = [&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec]
        .iter()
        .map(|t| t.detach().copy().set_requires_grad(true))
        .collect();
    let (b, _) = x.size2().unwrap();
    // f32 as the step computes, or f64 for a reference without rounding of its own.
    let kind = x.kind();
    let f = sae.config.d_sae;
    let xs = x * sae.input_scale;
    let xc = &xs - &p[3];
    let pre = xc.matmul(&p[0]) + &p[1];
    let theta_param = sae
        .threshold_param
        .as_ref()
        .map(|t| t.detach().copy().set_requires_grad(true));
    // jumprelu: the straight-through estimator as SAE-Lens's autograd functions define it,
    // by the surrogate v + (θ − sg θ)·sg(∂v/∂θ), whose value is v and whose θ-gradient is the
    // estimator's. (gate H, z, the Step surrogate)
    let mut step_sur = None;
    let z = match sae.config.architecture {
        Architecture::JumpRelu => {
            let eps = sae.jumprelu.unwrap().bandwidth;
            let param = theta_param.as_ref().unwrap();
            // θ's parameter is a leaf: `linear` θ is projected to ≥ 0 outside the graph.
            let theta = match sae.jumprelu.unwrap().threshold_param {
                ThresholdParam::Log => param.exp(),
                ThresholdParam::Linear => param.shallow_clone(),
            };
            let ts = theta.detach();
            let h = pre.gt_tensor(&ts).to_kind(kind).detach();
            let k = rectangle(&((pre.detach() - &ts) / eps));
            let dtheta = &theta - &ts;
            step_sur = Some(&h + &dtheta * (&k * (-1.0 / eps)));
            &pre * &h + &dtheta * (&k * &ts * (-1.0 / eps))
        }
        Architecture::Matryoshka
            if sae.matryoshka.as_ref().unwrap().selection == MatryoshkaSelection::TopK =>
        {
            let (v, i) = pre.topk(o.k, 1, true, true);
            pre.zeros_like().scatter(1, &i, &v.relu())
        }
        Architecture::Matryoshka => {
            let (v, i) = pre.reshape([-1]).topk(o.k * b, 0, true, true);
            Tensor::zeros([b * f], (kind, x.device()))
                .scatter(0, &i, &v.relu())
                .view([b, f])
        }
        Architecture::TopK => {
            let (v, i) = pre.topk(o.k, 1, true, true);
            pre.zeros_like().scatter(1, &i, &v.relu())
        }
        Architecture::BatchTopK => {
            let (v, i) = pre.reshape([-1]).topk(o.k * b, 0, true, true);
            Tensor::zeros([b * f], (kind, x.device()))
                .scatter(0, &i, &v.relu())
                .view([b, f])
        }
        Architecture::Relu => pre.relu(),
    };
    let x_hat = z.matmul(&p[2]) + &p[3];
    let e = &xs - &x_hat;
    let mse = e.square().mean(kind) / o.data_variance;
    // matryoshka: Σ_m λ_m·mse_m over the prefixes (the last is the whole SAE).
    let recon = match (&sae.matryoshka, sae.config.architecture) {
        (Some(m), Architecture::Matryoshka) => {
            let mut total = Tensor::zeros([], (kind, x.device()));
            for (&w, &lambda) in m.widths.iter().zip(&m.weights) {
                let x_hat_m = z.narrow(1, 0, w).matmul(&p[2].narrow(0, 0, w)) + &p[3];
                total += (&xs - x_hat_m).square().mean(kind) / o.data_variance * lambda;
            }
            total
        }
        _ => mse.shallow_clone(),
    };
    let norms = || p[2].square().sum_dim_intlist(1, false, kind).sqrt();
    let l1 = if sae.config.architecture == Architecture::JumpRelu && o.l1_coef != 0.0 {
        let per_row = match sae.jumprelu.unwrap().sparsity_loss {
            SparsityLoss::Step => step_sur.as_ref().unwrap().sum_dim_intlist(1, false, kind),
            SparsityLoss::Tanh => (&z * norms() * sae.jumprelu.unwrap().tanh_scale)
                .tanh()
                .sum_dim_intlist(1, false, kind),
        };
        per_row.mean(kind) * o.l1_coef
    } else if sae.config.architecture == Architecture::Relu && o.l1_coef != 0.0 {
        let norms = p[2].square().sum_dim_intlist(1, false, kind).sqrt();
        (&z * norms).sum_dim_intlist(1, false, kind).mean(kind) * o.l1_coef
    } else {
        Tensor::zeros([], (kind, x.device()))
    };
    let aux = match dead {
        Some(dead)
            if sae.config.architecture != Architecture::JumpRelu
                && o.k_aux > 0
                && b >= 2
                && dead.any().int64_value(&[]) != 0 =>
        {
            let ed = e.detach();
            let idx = dead.nonzero().view([-1]);
            let pd = pre.index_select(1, &idx);
            let ka = o.k_aux.min(idx.size()[0]);
            let (v, i) = pd.topk(ka, 1, true, true);
            let za = pd.zeros_like().scatter(1, &i, &v.relu());
            let e_hat = za.matmul(&p[2].index_select(0, &idx));
            let total = (&ed - ed.mean_dim(0, true, kind)).square().sum(kind);
            (ed - e_hat).square().sum(kind) / total * o.aux_coef
        }
        _ => Tensor::zeros([], (kind, x.device())),
    };
    let loss = &recon + &aux + &l1;
    loss.backward();
    Reference {
        loss: loss.detach(),
        mse: mse.detach(),
        aux: aux.detach(),
        l1: l1.detach(),
        grads: [p[0].grad(), p[1].grad(), p[2].grad(), p[3].grad()],
        threshold_param: theta_param.map(|t| t.grad()),
    }
}
