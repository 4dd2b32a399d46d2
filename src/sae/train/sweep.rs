//! Sweeps: the `sweep:` section of a training config (DESIGN.md "Training config") expanded
//! into the configurations that one pass over the data trains side by side, and the
//! `sweep.json` that lists them in the sweep's run directory.
//!
//! `sweep:` maps dotted keys to lists of values (nested sections are read as dotted keys, so
//! `sweep: {sae: {k: [16, 32]}}` and `--set sweep.sae.k=[16,32]` mean `sweep: {sae.k: [16,
//! 32]}`). The members are the Cartesian product of the lists, in the order the keys are
//! written, the last key varying fastest. Keys that would change the batches every member
//! shares, or where the run is written, cannot be swept ([`UNSWEEPABLE`]).
//!
//! Member names: `<last segment of the key><value>` for each key, joined by `-`
//! (`sweep: {sae.k: [16, 32], training.lr: [2e-4, 4e-4]}` gives `k16-lr0.0002`,
//! `k16-lr0.0004`, `k32-lr0.0002`, `k32-lr0.0004`); the whole dotted key stands in for the
//! last segment when two keys share it; a list value is its items joined by `,`; characters
//! other than letters, digits and `._+,-` become `_`. Should two names still coincide, every
//! name gets the prefix `mNN-` (its index in the product, from 00).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use crate::disk::write_bytes_atomic;
use crate::sae::config::TrainConfig;
use crate::sae::summary::FinalMetrics;

/// The file that marks a run directory as a sweep.
pub const SWEEP_FILE: &str = "sweep.json";

/// Keys that change the batches the members share (or the run directory): a key equal to
/// one of these, or under one ending in `.`, cannot be swept.
pub const UNSWEEPABLE: [&str; 6] = [
    "data.",
    "output.",
    "training.batch_size",
    "training.steps",
    "training.epochs",
    "training.seed",
];

/// One configuration of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    pub name: String,
    /// (dotted key, value), in the order of the `sweep:` section.
    pub overrides: Vec<(String, Value)>,
    /// The resolved member config: the sweep's config with the overrides applied and no
    /// `sweep:` section.
    pub config: TrainConfig,
}

/// `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepFile {
    pub members: Vec<SweepEntry>,
}

/// One member in `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepEntry {
    pub name: String,
    /// The member's run directory, relative to the sweep's.
    pub run_dir: String,
    /// Dotted key → value.
    pub overrides: serde_json::Map<String, serde_json::Value>,
    /// The member's `summary.json` `final` metrics; null until the member has finished.
    #[serde(rename = "final")]
    pub final_metrics: Option<FinalMetrics>,
}

impl SweepFile {
    pub fn new(members: &[MemberSpec]) -> Result<SweepFile> {
        let members = members
            .iter()
            .map(|m| {
                let mut overrides = serde_json::Map::new();
                for (k, v) in &m.overrides {
                    overrides.insert(k.clone(), serde_json::to_value(v)?);
                }
                Ok(SweepEntry {
                    name: m.name.clone(),
                    run_dir: m.name.clone(),
                    overrides,
                    final_metrics: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(SweepFile { members })
    }

    /// Read `<dir>/sweep.json`.
    pub fn read(dir: &Path) -> Result<SweepFile> {
        let path = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: SweepFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a sweep file", path.display()))?;
        ensure!(
            !file.members.is_empty(),
            "{} lists no members",
            path.display()
        );
        for m in &file.members {
            let p = Path::new(&m.run_dir);
            ensure!(
                p.is_relative() && p.components().count() == 1,
                "{}: member {} has run_dir {:?}: expected a folder name inside the sweep",
                path.display(),
                m.name,
                m.run_dir
            );
        }
        Ok(file)
    }

    /// Write `<dir>/sweep.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_bytes_atomic(
            &dir.join(SWEEP_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// The swept keys and their lists, checked: every key names a value of the config (not a
/// section), can be swept, and holds a non-empty list. Errors name the key.
pub fn sweep_keys(sweep: &Mapping) -> Result<Vec<(String, Vec<Value>)>> {
    let mut flat = Vec::new();
    flatten("", sweep, &mut flat)?;
    let defaults = serde_yaml_ng::to_value(TrainConfig::default())?;
    let mut keys = Vec::new();
    for (key, value) in flat {
        let mut node = Some(&defaults);
        for part in key.split('.') {
            node = node.and_then(|n| n.get(part));
        }
        match node {
            None => bail!(
                "sweep: unknown key {key} (keys are dotted config keys, e.g. sae.k or training.lr)"
            ),
            Some(Value::Mapping(_)) => bail!(
                "sweep: {key} is a section, not a value: sweep a key inside it (e.g. {key}.<name>)"
            ),
            Some(_) => {}
        }
        if let Some(fixed) = UNSWEEPABLE.iter().find(|u| {
            if u.ends_with('.') {
                key.starts_with(*u)
            } else {
                key == **u
            }
        }) {
            bail!(
                "sweep: {key} cannot be swept: it would change the batches the members share or where the run goes ({}* and {} are fixed for a sweep)",
                fixed.trim_end_matches('.'),
                UNSWEEPABLE[2..].join(", ")
            );
        }
        let Value::Sequence(values) = value else {
            bail!(
                "sweep: {key} must be a list of values (e.g. [16, 32]), found {}",
                inline(&value)
            );
        };
        ensure!(
            !values.is_empty(),
            "sweep: {key} is an empty list: give at least one value"
        );
        keys.push((key, values));
    }
    Ok(keys)
}

/// Nested mappings as dotted keys.
fn flatten(prefix: &str, map: &Mapping, out: &mut Vec<(String, Value)>) -> Result<()> {
    for (k, v) in map {
        let Some(k) = k.as_str() else {
            bail!("sweep: key {} is not a string", inline(k));
        };
        let key = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        ensure!(
            !k.is_empty() && k.split('.').all(|p| !p.is_empty()),
            "sweep: key {key:?} has an empty part"
        );
        match v {
            Value::Mapping(m) => flatten(&key, m, out)?,
            other => out.push((key, other.clone())),
        }
    }
    Ok(())
}

/// A YAML value on one line.
fn inline(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// The members of `config`'s sweep (empty when it has no `sweep:` section, or an empty
/// one). Every member's config is parsed here, so that a bad value fails before anything is
/// written; values are checked against the data later (`TrainConfig::validate`).
pub fn expand(config: &TrainConfig) -> Result<Vec<MemberSpec>> {
    let keys = sweep_keys(&config.sweep)?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut base = config.clone();
    base.sweep = Mapping::new();
    let base = serde_yaml_ng::to_value(&base)?;
    let labels = key_labels(&keys);
    let count: usize = keys.iter().map(|(_, v)| v.len()).product();
    let mut members = Vec::with_capacity(count);
    for index in 0..count {
        // Mixed radix, the last key fastest.
        let mut rest = index;
        let mut picks = vec![0; keys.len()];
        for (i, (_, values)) in keys.iter().enumerate().rev() {
            picks[i] = rest % values.len();
            rest /= values.len();
        }
        let overrides: Vec<(String, Value)> = keys
            .iter()
            .zip(&picks)
            .map(|((k, values), &p)| (k.clone(), values[p].clone()))
            .collect();
        let name = overrides
            .iter()
            .zip(&labels)
            .map(|((_, v), label)| sanitize(&format!("{label}{}", value_label(v))))
            .collect::<Vec<_>>()
            .join("-");
        let mut value = base.clone();
        for (k, v) in &overrides {
            set(&mut value, k, v.clone());
        }
        let member: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("sweep: member {name}: {path}: {}", e.into_inner())
        })?;
        members.push(MemberSpec {
            name,
            overrides,
            config: member,
        });
    }
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        let width = (count - 1).to_string().len().max(2);
        for (i, m) in members.iter_mut().enumerate() {
            m.name = format!("m{i:0width$}-{}", m.name);
        }
    }
    Ok(members)
}

/// The last segment of each key, or the whole key where two keys share their last segment.
fn key_labels(keys: &[(String, Vec<Value>)]) -> Vec<String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.iter()
        .map(|(k, _)| {
            let l = last(k);
            let shared = keys.iter().filter(|(o, _)| last(o) == l).count() > 1;
            if shared {
                k.clone()
            } else {
                l
            }
        })
        .collect()
}

/// A value as it appears in a member name.
fn value_label(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(value_label).collect::<Vec<_>>().join(","),
        Value::Mapping(_) => "map".into(),
        Value::Tagged(t) => value_label(&t.value),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+,-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Set the dotted `key` of a config value (its sections exist: the key was checked).
fn set(root: &mut Value, key: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = &mut node[*part];
    }
    node[parts[parts.len() - 1]] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(sets: &[&str]) -> Result<Vec<MemberSpec>> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        expand(&TrainConfig::from_yaml("", &sets)?)
    }

    #[test]
    fn the_product_is_named_and_resolved() {
        let yaml = "sae:\n  k: 8\nsweep:\n  sae.k: [16, 32]\n  training.lr: [2.0e-4, 4.0e-4]\n";
        let c = TrainConfig::from_yaml(yaml, &[]).unwrap();
        let m = expand(&c).unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "k16-lr0.0002",
                "k16-lr0.0004",
                "k32-lr0.0002",
                "k32-lr0.0004"
            ]
        );
        assert_eq!(m[2].config.sae.k, 32);
        assert_eq!(
            m[2].config.training.lr,
            crate::sae::config::LearningRate::Fixed(2e-4)
        );
        assert!(m[2].config.sweep.is_empty());
        // A member config equals the same config set directly.
        let solo =
            TrainConfig::from_yaml("", &["sae.k=32".into(), "training.lr=2.0e-4".into()]).unwrap();
        assert_eq!(m[2].config, solo);
        // Nested sections read as dotted keys.
        let nested =
            members(&["sweep.sae.k=[16,32]", "sweep.training.lr=[2.0e-4,4.0e-4]"]).unwrap();
        assert_eq!(nested, m);
        let short = members(&["sweep.training.lr=[2e-4,4e-4]"]).unwrap();
        assert_eq!(short[1].name, "lr0.0004");
        assert_eq!(
            short[1].config.training.lr,
            crate::sae::config::LearningRate::Fixed(4e-4)
        );
    }

    #[test]
    fn no_sweep_or_an_empty_one_is_one_configuration() {
        assert!(members(&[]).unwrap().is_empty());
        assert!(members(&["sweep={}"]).unwrap().is_empty());
        assert!(members(&["sweep=null"]).unwrap().is_empty());
    }

    #[test]
    fn bad_sweeps_name_the_key() {
        let check = |set: &str, expect: &[&str]| {
            let err = format!("{:#}", members(&[set]).unwrap_err());
            for e in expect {
                assert!(err.contains(e), "{set}: {err}");
            }
            assert!(!err.contains('\n'), "one line: {err}");
        };
        check(
            "sweep.data.cache=[a, b]",
            &["data.cache", "cannot be swept"],
        );
        check(
            "sweep.training.batch_size=[1, 2]",
            &["training.batch_size", "cannot be swept"],
        );
        check(
            "sweep.training.seed=[1, 2]",
            &["training.seed", "cannot be swept"],
        );
        check("sweep.training.epochs=[1, 2]", &["training.epochs"]);
        check(
            "sweep.output.run_dir=[a]",
            &["output.run_dir", "cannot be swept"],
        );
        check("sweep.sae.k=[]", &["sae.k", "empty list"]);
        check("sweep.sae.k=16", &["sae.k", "must be a list"]);
        check("sweep.sae.kk=[1]", &["sae.kk", "unknown key"]);
        check("sweep.sae=[1]", &["sae", "section"]);
        check("sweep.sae.k=[16, abc]", &["kabc", "sae.k", "invalid type"]);
    }

    #[test]
    fn colliding_names_get_an_index() {
        let m = members(&[
            "sweep.training.lr_schedule=[cosine, linear]",
            "sweep.sae.k=[4]",
        ])
        .unwrap();
        assert_eq!(m[0].name, "lr_schedulecosine-k4");
        // Two keys ending in the same segment use the whole key.
        assert_eq!(
            key_labels(&[("a.k".into(), vec![]), ("b.k".into(), vec![])]),
            ["a.k", "b.k"]
        );
        assert_eq!(sanitize("a b/c"), "a_b_c");
        let same = members(&["sweep.training.adam_betas=[[0.9, 0.99], [0.9, 0.99]]"]).unwrap();
        assert_eq!(same[0].name, "m00-adam_betas0.9,0.99");
        assert_eq!(same[1].name, "m01-adam_betas0.9,0.99");
    }
}
