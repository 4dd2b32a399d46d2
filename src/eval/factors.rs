//! Ground-truth factors of procedural images in `evaluate`: per factor value the latent
//! that detects it best (AUROC), per latent the value it detects best, and whether the
//! automatic labels name those values (the labels' factor precision).

use serde_json::{json, Value};

use super::auroc::{class_statistics, SparseScores};
use crate::data::procedural::{Background, Colour, Shape, Texture};
use crate::data::ProceduralFactors;

/// The factors a procedural image's source records (None for any other source).
pub fn of_source(source: &str) -> Option<ProceduralFactors> {
    source
        .contains("shape=")
        .then(|| ProceduralFactors::from_source(source).ok())
        .flatten()
}

/// Per latent, the factor value it detects best: (factor, value, AUROC).
pub type BestValues = Vec<Option<(&'static str, &'static str, f64)>>;

/// The `factors` section: per factor value, the best latent and its AUROC; and per latent
/// the factor value it detects best (for the labels' factor precision).
pub fn section(
    store: &SparseScores,
    factors: &[Option<ProceduralFactors>],
    f: usize,
) -> (Value, Option<String>, BestValues) {
    let kept = store.images();
    let fs = &factors[..kept];
    let mut per_latent: BestValues = vec![None; f];
    if fs.is_empty() || fs.iter().any(Option::is_none) {
        let reason = "factors need a procedural dataset (image sources that record shape, colour, texture and background)";
        return (Value::Null, Some(reason.to_string()), per_latent);
    }
    let fs: Vec<ProceduralFactors> = fs.iter().map(|f| f.expect("checked")).collect();
    type Of = fn(&ProceduralFactors) -> (usize, &'static str);
    let table: [(&str, usize, Of); 4] = [
        ("colour", Colour::ALL.len(), |p| {
            (p.colour.position(), p.colour.name())
        }),
        ("shape", Shape::ALL.len(), |p| {
            (p.shape.position(), p.shape.name())
        }),
        ("texture", Texture::ALL.len(), |p| {
            (p.texture.position(), p.texture.name())
        }),
        ("background", Background::ALL.len(), |p| {
            (p.background.position(), p.background.name())
        }),
    ];
    let mut out = serde_json::Map::new();
    let mut means = Vec::new();
    for (name, n, of) in table {
        let labels: Vec<i64> = fs.iter().map(|p| of(p).0 as i64).collect();
        let mut names = vec![""; n];
        for p in &fs {
            let (i, s) = of(p);
            names[i] = s;
        }
        let stats = class_statistics(store, &labels, n, f, 0);
        for (j, best) in stats.best_class.iter().enumerate() {
            if let Some((c, auroc)) = *best {
                if per_latent[j].is_none_or(|(_, _, b)| auroc > b) {
                    per_latent[j] = Some((name, names[c], auroc));
                }
            }
        }
        let values: Vec<Value> = stats
            .best
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                b.map(|b| json!({"value": names[i], "best_latent": b.latent, "auroc": b.auroc}))
            })
            .collect();
        let aurocs: Vec<f64> = stats.best.iter().flatten().map(|b| b.auroc).collect();
        let mean = (!aurocs.is_empty()).then(|| aurocs.iter().sum::<f64>() / aurocs.len() as f64);
        if let Some(m) = mean {
            means.push(m);
        }
        out.insert(name.into(), json!({"values": values, "mean_auroc": mean}));
    }
    let overall = (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64);
    out.insert("mean_auroc".into(), json!(overall));
    (Value::Object(out), None, per_latent)
}

/// Whether a label names `value`: one of its words is the value's name.
pub fn names_value(label: &str, value: &str) -> bool {
    label
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == value)
}

/// Add the factor precision to a labels section: per labelled feature, the factor value it
/// detects best (by AUROC) and whether its label names that value; over the features, the
/// fraction whose label does. Left as it is without factors.
pub fn add_factor_precision(labels: &mut Value, best: &BestValues) {
    let Some(rows) = labels.get_mut("features").and_then(Value::as_array_mut) else {
        return;
    };
    let mut named = 0usize;
    let mut scored = 0usize;
    for row in rows.iter_mut() {
        let latent = row["latent"].as_u64().map(|l| l as usize);
        let label = row["label"].as_str().unwrap_or("").to_string();
        if let Some(Some((factor, value, auroc))) = latent.and_then(|l| best.get(l)) {
            let hit = names_value(&label, value);
            scored += 1;
            named += usize::from(hit);
            let map = row.as_object_mut().expect("a feature row");
            map.insert("best_factor".into(), json!(factor));
            map.insert("best_value".into(), json!(value));
            map.insert("best_value_auroc".into(), json!(auroc));
            map.insert("names_best_value".into(), json!(hit));
        }
    }
    if scored > 0 {
        let map = labels.as_object_mut().expect("a labels section");
        map.insert(
            "factor_precision".into(),
            json!(named as f64 / scored as f64),
        );
        map.insert("factor_precision_features".into(), json!(scored));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_best_value_by_whole_words() {
        assert!(names_value("red", "red"));
        assert!(names_value("a Red star", "red"));
        assert!(!names_value("reddish", "red"));
        let best: BestValues = vec![
            Some(("colour", "red", 0.9)),
            Some(("shape", "star", 0.8)),
            None,
        ];
        let mut labels = json!({"features": [
            {"latent": 0, "label": "red"},
            {"latent": 1, "label": "ring"},
            {"latent": 2, "label": "sand"},
        ]});
        add_factor_precision(&mut labels, &best);
        assert_eq!(labels["factor_precision"], json!(0.5));
        assert_eq!(labels["factor_precision_features"], json!(2));
        assert_eq!(labels["features"][0]["names_best_value"], json!(true));
        assert_eq!(labels["features"][1]["best_value"], json!("star"));
        assert!(labels["features"][2].get("best_value").is_none());
    }
}
