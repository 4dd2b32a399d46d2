//! Throughput of saeclip's native CLIP image forward: the whole tower to the image
//! embedding, and the forward stopped after one block (what `extract` runs).
//!
//! Driven by bench/clip_forward.py (`make bench-clip`), which makes the model and the pixel
//! batch, times transformers on the same inputs and writes bench/RESULTS.md. Run alone:
//!
//! ```text
//! cargo bench --bench clip_forward -- --model DIR --pixels FILE [--iters 5] [--warmup 1]
//!     [--threads N] [--layer 5] [--embeds OUT.safetensors] [--variants]
//! ```
//!
//! `--variants` also times prototype rewrites of the vision forward (see [`VARIANTS`]) against
//! saeclip's, to measure what a change to src/clip/encoder.rs would buy before making it.
//!
//! Prints one JSON line on stdout: every timed iteration in seconds and the medians.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use saeclip::clip::{weights, Clip, LoadOptions};
use tch::Tensor;

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    /// A model saeclip can load (here a transformers directory).
    model: PathBuf,
    /// A safetensors file holding one [B, 3, P, P] f32 tensor.
    pixels: PathBuf,
    /// Timed iterations of each forward.
    iters: usize,
    /// Untimed iterations of each forward first.
    warmup: usize,
    /// Intra-op threads; 0 keeps libtorch's default.
    threads: i32,
    /// The block after which the short forward stops.
    layer: usize,
    /// Where to write the image embeddings of the batch, for the parity check.
    embeds: Option<PathBuf>,
    /// Also time the prototype forwards of [`VARIANTS`] against saeclip's.
    variants: bool,
}

const USAGE: &str = "usage: clip_forward --model DIR --pixels FILE [--iters N] [--warmup N] \
                     [--threads N] [--layer L] [--embeds FILE] [--variants]";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut model = None;
    let mut pixels = None;
    let mut out = Args {
        model: PathBuf::new(),
        pixels: PathBuf::new(),
        iters: 5,
        warmup: 1,
        threads: 0,
        layer: 5,
        embeds: None,
        variants: false,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        // cargo passes `--bench` to every bench target.
        if flag == "--bench" {
            continue;
        }
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |v: String| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{flag}: `{v}` is not a count"))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--pixels" => pixels = Some(PathBuf::from(value()?)),
            "--iters" => out.iters = number(value()?)?,
            "--warmup" => out.warmup = number(value()?)?,
            "--threads" => out.threads = number(value()?)? as i32,
            "--layer" => out.layer = number(value()?)?,
            "--embeds" => out.embeds = Some(PathBuf::from(value()?)),
            "--variants" => out.variants = true,
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    out.model = model.with_context(|| format!("--model is required\n{USAGE}"))?;
    out.pixels = pixels.with_context(|| format!("--pixels is required\n{USAGE}"))?;
    ensure!(out.iters > 0, "--iters must be at least 1");
    Ok(out)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds taken by `f`, whose result is dropped only after the clock stops.
fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<f64> {
    let start = Instant::now();
    let out = f()?;
    let secs = start.elapsed().as_secs_f64();
    drop(out);
    Ok(secs)
}

fn run(args: &Args) -> Result<()> {
    let _guard = tch::no_grad_guard();
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let start = Instant::now();
    let clip = Clip::load(&args.model, &LoadOptions::default())?;
    let load_s = start.elapsed().as_secs_f64();
    let mut tensors = weights::read_safetensors(&args.pixels)?;
    ensure!(
        tensors.len() == 1,
        "{} must hold exactly one tensor, found {}",
        args.pixels.display(),
        tensors.len()
    );
    let pixels = tensors.remove(0).1;
    let batch = pixels.size()[0];

    let full = || clip.image_embeds(&pixels);
    let short = || clip.residual(&pixels, args.layer);
    for _ in 0..args.warmup {
        let _ = full()?;
        let _ = short()?;
    }
    let mut full_s = Vec::with_capacity(args.iters);
    let mut short_s = Vec::with_capacity(args.iters);
    // Alternate which runs first so that slow drifts of the machine hit both.
    for i in 0..args.iters {
        if i.is_multiple_of(2) {
            full_s.push(time(full)?);
            short_s.push(time(short)?);
        } else {
            short_s.push(time(short)?);
            full_s.push(time(full)?);
        }
    }

    if let Some(path) = &args.embeds {
        let embeds: Tensor = full()?;
        Tensor::write_safetensors(&[("image_embeds", &embeds)], path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let variants = if args.variants {
        time_variants(&clip, &pixels, args)?
    } else {
        serde_json::Value::Null
    };

    let (full_med, short_med) = (median(&full_s), median(&short_s));
    let report = serde_json::json!({
        "batch": batch,
        "threads": tch::get_num_threads(),
        "layer": args.layer,
        "mkldnn": tch::utils::has_mkldnn(),
        "load_s": load_s,
        "full_s": full_s,
        "block_s": short_s,
        "full_median_s": full_med,
        "block_median_s": short_med,
        "full_images_per_s": batch as f64 / full_med,
        "block_images_per_s": batch as f64 / short_med,
        "variants": variants,
    });
    println!("{report}");
    Ok(())
}

/// How a prototype forward differs from saeclip's.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    /// One [3D, D] projection for q, k and v, split by views.
    fused_qkv: bool,
    act: Act,
    /// Add the residual into the fresh block output instead of allocating the sum.
    add_in_place: bool,
}

/// How QuickGELU, `h · σ(1.702 h)`, is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    /// `h · σ(1.702 h)` as written: three passes, three new tensors.
    Reference,
    /// `t = 1.702 h; σ(t) in place; h ·= t`: three passes, one new tensor.
    InPlace,
    /// `silu(1.702 h) / 1.702` in place (`mul_`, `silu_`, `div_`): no weight changes.
    Silu,
    /// 1.702 folded into fc1 and 1/1.702 into fc2 (weights scaled once at load), then
    /// `silu_`: one pass, no new tensor.
    Folded,
}

const VARIANTS: [Variant; 6] = [
    Variant {
        name: "prototype: separate q/k/v, quickgelu in three ops (saeclip before fusing)",
        fused_qkv: false,
        act: Act::Reference,
        add_in_place: false,
    },
    Variant {
        name: "fused qkv",
        fused_qkv: true,
        act: Act::Reference,
        add_in_place: false,
    },
    Variant {
        name: "in-place quickgelu",
        fused_qkv: false,
        act: Act::InPlace,
        add_in_place: false,
    },
    Variant {
        name: "quickgelu as mul_, silu_, div_",
        fused_qkv: false,
        act: Act::Silu,
        add_in_place: false,
    },
    Variant {
        name: "folded quickgelu (silu_)",
        fused_qkv: false,
        act: Act::Folded,
        add_in_place: false,
    },
    Variant {
        name: "all: fused qkv + folded quickgelu + in-place residual add",
        fused_qkv: true,
        act: Act::Folded,
        add_in_place: true,
    },
];

const QUICK_GELU: f64 = 1.702;

/// A weight and its bias.
struct Affine(Tensor, Option<Tensor>);

impl Affine {
    fn apply(&self, x: &Tensor) -> Tensor {
        x.linear(&self.0, self.1.as_ref())
    }
}

/// The weights of one vision block, in every layout the variants use.
struct ProtoBlock {
    ln1: Affine,
    q: Affine,
    k: Affine,
    v: Affine,
    qkv: Affine,
    out: Affine,
    ln2: Affine,
    fc1: Affine,
    fc2: Affine,
    fc1_folded: Affine,
    fc2_folded: Affine,
}

/// saeclip's vision tower re-written op by op from its own variables.
struct Proto<'a> {
    clip: &'a Clip,
    blocks: Vec<ProtoBlock>,
    post: Affine,
    proj: Tensor,
    heads: i64,
    eps: f64,
}

impl<'a> Proto<'a> {
    fn new(clip: &'a Clip) -> Result<Proto<'a>> {
        let Clip::Native { vs, .. } = clip else {
            bail!("--variants needs a native model");
        };
        let vars = vs.variables();
        let get = |name: &str| -> Result<Tensor> {
            vars.get(name)
                .map(Tensor::shallow_clone)
                .with_context(|| format!("the model has no variable {name}"))
        };
        let affine = |prefix: &str| -> Result<Affine> {
            Ok(Affine(
                get(&format!("{prefix}.weight"))?,
                Some(get(&format!("{prefix}.bias"))?),
            ))
        };
        let c = &clip.clip_config().expect("a CLIP model").vision;
        let mut blocks = Vec::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("vision_model.encoder.layers.{i}");
            let a = |n: &str| affine(&format!("{p}.{n}"));
            let (q, k, v) = (
                a("self_attn.q_proj")?,
                a("self_attn.k_proj")?,
                a("self_attn.v_proj")?,
            );
            let bias = |x: &Affine| x.1.as_ref().expect("linear with bias").shallow_clone();
            let qkv = Affine(
                Tensor::cat(&[&q.0, &k.0, &v.0], 0),
                Some(Tensor::cat(&[bias(&q), bias(&k), bias(&v)], 0)),
            );
            let (fc1, fc2) = (a("mlp.fc1")?, a("mlp.fc2")?);
            let fc1_folded = Affine(&fc1.0 * QUICK_GELU, Some(bias(&fc1) * QUICK_GELU));
            let fc2_folded = Affine(&fc2.0 / QUICK_GELU, Some(bias(&fc2)));
            blocks.push(ProtoBlock {
                ln1: a("layer_norm1")?,
                q,
                k,
                v,
                qkv,
                out: a("self_attn.out_proj")?,
                ln2: a("layer_norm2")?,
                fc1,
                fc2,
                fc1_folded,
                fc2_folded,
            });
        }
        Ok(Proto {
            clip,
            blocks,
            post: affine("vision_model.post_layernorm")?,
            proj: get("visual_projection.weight")?,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
        })
    }

    fn layer_norm(&self, x: &Tensor, ln: &Affine) -> Tensor {
        let d = x.size()[x.dim() - 1];
        x.layer_norm([d], Some(&ln.0), ln.1.as_ref(), self.eps, false)
    }

    fn block(&self, x: &Tensor, b: &ProtoBlock, v: Variant) -> Tensor {
        let (n, s, d) = x.size3().expect("[B, S, D]");
        let (h, k) = (self.heads, d / self.heads);
        let y = self.layer_norm(x, &b.ln1);
        let (q, kk, vv) = if v.fused_qkv {
            let qkv = b
                .qkv
                .apply(&y)
                .view([n, s, 3, h, k])
                .permute([2, 0, 3, 1, 4]); // 3, B, H, S, K
            (qkv.get(0), qkv.get(1), qkv.get(2))
        } else {
            let heads = |t: Tensor| t.view([n, s, h, k]).transpose(1, 2);
            (
                heads(b.q.apply(&y)),
                heads(b.k.apply(&y)),
                heads(b.v.apply(&y)),
            )
        };
        let a = Tensor::scaled_dot_product_attention(
            &q,
            &kk,
            &vv,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let a = b.out.apply(&a.transpose(1, 2).reshape([n, s, d]));
        let x = if v.add_in_place {
            let mut a = a;
            a.g_add_(x)
        } else {
            x + a
        };
        let y = self.layer_norm(&x, &b.ln2);
        let m = match v.act {
            Act::Reference => {
                let m = b.fc1.apply(&y);
                &m * (&m * QUICK_GELU).sigmoid()
            }
            Act::InPlace => {
                let mut m = b.fc1.apply(&y);
                let mut t = &m * QUICK_GELU;
                let _ = t.sigmoid_();
                m.g_mul_(&t)
            }
            Act::Silu => b
                .fc1
                .apply(&y)
                .g_mul_scalar_(QUICK_GELU)
                .silu_()
                .g_div_scalar_(QUICK_GELU),
            Act::Folded => b.fc1_folded.apply(&y).silu_(),
        };
        let fc2 = if v.act == Act::Folded {
            &b.fc2_folded
        } else {
            &b.fc2
        };
        let mut m = fc2.apply(&m);
        if v.add_in_place {
            m.g_add_(&x)
        } else {
            x + m
        }
    }

    fn image_embeds(&self, pixels: &Tensor, v: Variant) -> Result<Tensor> {
        let Clip::Native { model, .. } = self.clip else {
            unreachable!("checked in new")
        };
        let mut x = model.vision.embed(pixels)?;
        for b in &self.blocks {
            x = self.block(&x, b, v);
        }
        let pooled = self.layer_norm(&x.select(1, 0), &self.post);
        Ok(pooled.linear(&self.proj, None::<Tensor>))
    }
}

/// Time each of [`VARIANTS`] against `clip.image_embeds`, interleaved, and check that each
/// computes the same embeddings.
/// User + system CPU seconds of this process so far, all threads (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, in USER_HZ ticks (100 on Linux); the command
    // name (field 2) may hold spaces, so count from its closing parenthesis.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn time_variants(clip: &Clip, pixels: &Tensor, args: &Args) -> Result<serde_json::Value> {
    let proto = Proto::new(clip)?;
    let reference = clip.image_embeds(pixels)?;
    let scale = reference.abs().max().double_value(&[]);
    let mut out = serde_json::Map::new();
    let mut times = vec![Vec::new(); VARIANTS.len() + 1];
    for v in VARIANTS {
        let got = proto.image_embeds(pixels, v)?;
        let diff = (&got - &reference).abs().max().double_value(&[]) / scale;
        ensure!(diff < 1e-4, "variant `{}` differs: {diff:e}", v.name);
        out.insert(v.name.to_string(), serde_json::json!({ "rel_diff": diff }));
    }
    // Wall and process CPU seconds (all threads): on a shared machine the CPU time tracks
    // the work done even when the wall time mostly tracks the neighbours.
    let mut cpu = vec![Vec::new(); VARIANTS.len() + 1];
    let mut timed = |slot: usize, f: &dyn Fn() -> Result<Tensor>| -> Result<()> {
        let c0 = cpu_seconds();
        times[slot].push(time(f)?);
        cpu[slot].push(cpu_seconds() - c0);
        Ok(())
    };
    for _ in 0..args.iters {
        timed(0, &|| clip.image_embeds(pixels))?;
        for (i, &v) in VARIANTS.iter().enumerate() {
            timed(i + 1, &|| proto.image_embeds(pixels, v))?;
        }
    }
    let (base, base_cpu) = (median(&times[0]), median(&cpu[0]));
    out.insert(
        "saeclip image_embeds".to_string(),
        serde_json::json!({ "median_s": base, "median_cpu_s": base_cpu, "s": times[0] }),
    );
    for (i, v) in VARIANTS.iter().enumerate() {
        let (med, med_cpu) = (median(&times[i + 1]), median(&cpu[i + 1]));
        let entry = out[v.name].as_object_mut().expect("inserted above");
        entry.insert("median_s".into(), med.into());
        entry.insert("median_cpu_s".into(), med_cpu.into());
        entry.insert("speedup_vs_saeclip".into(), (base / med).into());
        entry.insert("cpu_speedup_vs_saeclip".into(), (base_cpu / med_cpu).into());
        entry.insert("s".into(), times[i + 1].clone().into());
    }
    Ok(out.into())
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clip_forward: {e:#}");
            ExitCode::FAILURE
        }
    }
}
