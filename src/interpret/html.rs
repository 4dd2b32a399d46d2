//! The feature browser: a static site that opens from disk without a server.
//!
//! `index.html` (page, style and script inline) loads `data.js`, which assigns the data to
//! `window.SAECLIP_DATA` (a script element, not `fetch()`, so `file://` works). The index
//! searches by label or id and sorts by rank, frequency, max activation or label score;
//! the URL fragment `#q=TEXT&sort=KEY` sets both on load (used by the browser test).
//! Each card shows the collage, the statistics, the density (share of the scored images
//! the feature fires on) with the feature's AUROC-best class (or "no labels" for a dataset
//! without classes), the labels and the top images' sources:
//! a link to the file for file-based datasets, the factors for procedural images.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::{relative_path, source_file, InterpretOptions, InterpretSummary};
use crate::data::{DatasetKind, ProceduralFactors};

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>saeclip features</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #15161a; color: #e8e8e8; }
header { position: sticky; top: 0; background: #202228; padding: 10px 16px; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; z-index: 1; }
header h1 { font-size: 18px; margin: 0 12px 0 0; }
input, select { font-size: 14px; padding: 4px 6px; }
#meta { font-size: 12px; color: #aaa; }
#cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; padding: 16px; }
.card { background: #202228; border-radius: 8px; padding: 10px; }
.card img { width: 100%; border-radius: 4px; }
.card h2 { font-size: 15px; margin: 4px 0; }
.stats, .density { font-size: 12px; color: #bbb; }
.labels span { display: inline-block; background: #33363f; border-radius: 4px; padding: 1px 6px; margin: 2px; font-size: 12px; }
details { font-size: 12px; margin-top: 6px; }
details li { margin: 2px 0; word-break: break-all; }
a { color: #8cb4ff; }
</style>
</head>
<body>
<header>
  <h1>saeclip features</h1>
  <input id="search" type="search" placeholder="search label or id" aria-label="search">
  <label>sort <select id="sort">
    <option value="rank">rank</option>
    <option value="frequency">frequency</option>
    <option value="max">max activation</option>
    <option value="label_score">label score</option>
  </select></label>
  <span id="count"></span>
  <span id="meta"></span>
</header>
<main id="cards"></main>
<script>
window.SAECLIP_ERRORS = [];
window.addEventListener("error", function (e) {
  window.SAECLIP_ERRORS.push(String(e.message));
  document.body.setAttribute("data-errors", window.SAECLIP_ERRORS.join(" | "));
});
</script>
<script src="data.js"></script>
<script>
(function () {
  "use strict";
  var data = window.SAECLIP_DATA;
  var cards = document.getElementById("cards");
  var search = document.getElementById("search");
  var sort = document.getElementById("sort");
  var count = document.getElementById("count");
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function card(f) {
    var c = el("article", { "class": "card", "data-id": String(f.id), "data-rank": String(f.rank) });
    c.appendChild(el("h2", {}, "feature " + f.id + " · rank " + f.rank));
    var img = el("img", { src: f.collage, alt: "top images of feature " + f.id, loading: "lazy" });
    c.appendChild(img);
    c.appendChild(el("div", { "class": "stats" },
      "mean " + f.mean.toFixed(4) + " · max " + f.max.toFixed(4) + " · frequency " +
      (100 * f.frequency).toFixed(2) + "% · " + f.top.length + " top images"));
    var best = f.best_class ? "best class " + f.best_class["class"] + " (AUROC " + f.best_class.auroc.toFixed(3) + ")"
      : (window.SAECLIP_DATA.meta.labelled ? "best class: none (never fires on a labelled image)" : "best class: no labels");
    c.appendChild(el("div", { "class": "density" },
      "fires on " + (100 * f.frequency).toFixed(1) + "% of images · " + best));
    var labels = el("div", { "class": "labels" });
    f.labels.forEach(function (l) { labels.appendChild(el("span", {}, l.phrase + " " + l.score.toFixed(3))); });
    c.appendChild(labels);
    var det = el("details", {});
    det.appendChild(el("summary", {}, "sources"));
    var ul = el("ol", {});
    f.top.forEach(function (t) {
      var li = el("li", {});
      li.appendChild(document.createTextNode(t.activation.toFixed(3) + " · " + t["class"] + " · "));
      if (t.link) { li.appendChild(el("a", { href: t.link }, t.source)); }
      else { li.appendChild(document.createTextNode(t.description || t.source)); }
      ul.appendChild(li);
    });
    det.appendChild(ul);
    c.appendChild(det);
    return c;
  }
  var keys = {
    rank: function (f) { return f.rank; },
    frequency: function (f) { return -f.frequency; },
    max: function (f) { return -f.max; },
    label_score: function (f) { return f.labels.length ? -f.labels[0].score : Infinity; }
  };
  function render() {
    var q = search.value.trim().toLowerCase();
    var key = keys[sort.value] || keys.rank;
    var shown = data.features.filter(function (f) {
      if (!q) { return true; }
      if (String(f.id) === q) { return true; }
      return f.labels.some(function (l) { return l.phrase.toLowerCase().indexOf(q) >= 0; });
    });
    shown.sort(function (a, b) { return (key(a) - key(b)) || (a.rank - b.rank); });
    cards.textContent = "";
    shown.forEach(function (f) { cards.appendChild(card(f)); });
    count.textContent = shown.length + " of " + data.features.length + " features";
  }
  function fromHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.has("q")) { search.value = params.get("q"); }
    if (params.has("sort")) { sort.value = params.get("sort"); }
  }
  document.getElementById("meta").textContent = data.meta.description;
  search.addEventListener("input", render);
  sort.addEventListener("change", render);
  window.addEventListener("hashchange", function () { fromHash(); render(); });
  fromHash();
  render();
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"#;

/// A human description of where an image came from.
fn describe(kind: DatasetKind, source: &str) -> String {
    if kind == DatasetKind::Procedural {
        if let Ok(f) = ProceduralFactors::from_source(source) {
            return format!(
                "generated: {} {}, {}, on {} background, {}px, rotated {}°",
                f.colour, f.shape, f.texture, f.background, f.side, f.rotation
            );
        }
    }
    source.to_string()
}

/// Write `index.html` and `data.js` into `dir`.
pub fn write_site(
    dir: &Path,
    o: &InterpretOptions,
    s: &InterpretSummary,
    sample: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let features: Vec<serde_json::Value> = s
        .features
        .iter()
        .map(|f| -> Result<serde_json::Value> {
            let top: Vec<serde_json::Value> = f
                .top
                .iter()
                .map(|t| -> Result<serde_json::Value> {
                    let link = match source_file(&o.dataset, o.split, &t.source) {
                        Some(p) => Some(relative_path(&p, dir)?),
                        None => None,
                    };
                    Ok(json!({
                        "index": t.image_index,
                        "source": t.source,
                        "class": t.class,
                        "activation": t.activation,
                        "token": t.token,
                        "link": link,
                        "description": describe(o.dataset.kind, &t.source),
                    }))
                })
                .collect::<Result<_>>()?;
            Ok(json!({
                "rank": f.rank,
                "id": f.latent,
                "collage": relative_path(&f.collage, dir)?,
                "mean": f.mean,
                "max": f.max,
                "frequency": f.frequency,
                "best_class": f.best_class.as_ref().map(|(class, auroc)| json!({"class": class, "auroc": auroc})),
                "labels": f.labels.iter().map(|l| json!({"phrase": l.phrase, "score": l.score})).collect::<Vec<_>>(),
                "top": top,
            }))
        })
        .collect::<Result<_>>()?;
    let precision = s.factor_precision.map_or(String::new(), |(named, of)| {
        format!(
            " · label precision {named}/{of} ({:.0}%): labels naming the factor value the feature detects best",
            100.0 * named as f64 / of as f64
        )
    });
    let data = json!({
        "meta": {
            "description": format!(
                "{} · {} ({}) · {} images scored of {} sampled · {} live, {} dead latents · labels: {}{precision}",
                o.sae.display(), o.dataset, o.split, s.images, sample, s.live, s.dead,
                match s.label_method { super::LabelMethod::Decoder => "decoder direction", super::LabelMethod::TopImages => "top-image embeddings", super::LabelMethod::LabelModel => "top-image embeddings of the label model", super::LabelMethod::Unlabelled => "none (no text tower)" }
            ),
            "model": o.model.display().to_string(),
            "sae": o.sae.display().to_string(),
            "labelled": s.labelled,
            "factor_precision": s.factor_precision.map(|(named, of)| json!({"named": named, "features": of, "precision": named as f64 / of as f64})),
        },
        "features": features,
    });
    let js = format!(
        "window.SAECLIP_DATA = {};\n",
        serde_json::to_string(&data)?.replace("</", "<\\/")
    );
    crate::disk::write_bytes_atomic(&dir.join("data.js"), js.as_bytes())?;
    crate::disk::write_bytes_atomic(&dir.join("index.html"), PAGE.as_bytes())?;
    Ok(())
}
