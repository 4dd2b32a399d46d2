//! The SAE training loss computed densely with tch autograd: the independent
//! reference for the hand-written sparse gradients (tests/sae_core.rs) and the baseline
//! of the step-time benchmark (benches/sae_step.rs).

use saeclip::sae::{Architecture, LossOptions, Sae};
use tch::{Kind, Tensor};

/// Loss terms and the gradients of `W_enc`, `b_enc`, `W_dec`, `b_dec`.
pub struct Reference {
    pub loss: Tensor,
    pub mse: Tensor,
    pub aux: Tensor,
    pub l1: Tensor,
    pub grads: [Tensor; 4],
}

/// The same loss with dense codes and tch autograd.
pub fn dense_reference(sae: &Sae, x: &Tensor, dead: Option<&Tensor>, o: &LossOptions) -> Reference {
    let p: Vec<Tensor> = [&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec]
        .iter()
        .map(|t| t.detach().copy().set_requires_grad(true))
        .collect();
    let (b, _) = x.size2().unwrap();
    let f = sae.config.d_sae;
    let xs = x * sae.input_scale;
    let xc = &xs - &p[3];
    let pre = xc.matmul(&p[0]) + &p[1];
    let z = match sae.config.architecture {
        Architecture::TopK => {
            let (v, i) = pre.topk(o.k, 1, true, true);
            pre.zeros_like().scatter(1, &i, &v.relu())
        }
        Architecture::BatchTopK => {
            let (v, i) = pre.reshape([-1]).topk(o.k * b, 0, true, true);
            Tensor::zeros([b * f], (Kind::Float, x.device()))
                .scatter(0, &i, &v.relu())
                .view([b, f])
        }
        Architecture::Relu => pre.relu(),
    };
    let x_hat = z.matmul(&p[2]) + &p[3];
    let e = &xs - &x_hat;
    let mse = e.square().mean(Kind::Float) / o.data_variance;
    let l1 = if sae.config.architecture == Architecture::Relu && o.l1_coef != 0.0 {
        let norms = p[2].square().sum_dim_intlist(1, false, Kind::Float).sqrt();
        (&z * norms)
            .sum_dim_intlist(1, false, Kind::Float)
            .mean(Kind::Float)
            * o.l1_coef
    } else {
        Tensor::zeros([], (Kind::Float, x.device()))
    };
    let aux = match dead {
        Some(dead) if o.k_aux > 0 && b >= 2 && dead.any().int64_value(&[]) != 0 => {
            let ed = e.detach();
            let idx = dead.nonzero().view([-1]);
            let pd = pre.index_select(1, &idx);
            let ka = o.k_aux.min(idx.size()[0]);
            let (v, i) = pd.topk(ka, 1, true, true);
            let za = pd.zeros_like().scatter(1, &i, &v.relu());
            let e_hat = za.matmul(&p[2].index_select(0, &idx));
            let total = (&ed - ed.mean_dim(0, true, Kind::Float))
                .square()
                .sum(Kind::Float);
            (ed - e_hat).square().sum(Kind::Float) / total * o.aux_coef
        }
        _ => Tensor::zeros([], (Kind::Float, x.device())),
    };
    let loss = &mse + &aux + &l1;
    loss.backward();
    Reference {
        loss: loss.detach(),
        mse: mse.detach(),
        aux: aux.detach(),
        l1: l1.detach(),
        grads: [p[0].grad(), p[1].grad(), p[2].grad(), p[3].grad()],
    }
}
