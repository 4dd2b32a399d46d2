//! The activation cache: a directory of safetensors shards that `extract` writes once and
//! `train`, `interpret` and Python users read (DESIGN.md "Activation cache").
//!
//! Layout: `manifest.json` (written last, atomically: a directory without it is an
//! unfinished extraction), `images.csv`, `shard-00000.safetensors`, … Each shard holds
//! `activations` [R, D], `image_index` [R] and `token_index` [R]; a shard ends on an image
//! boundary. While an extraction runs, each finished shard gets a sidecar
//! `shard-NNNNN.meta.json` (its images and skipped files, and where in the image list it
//! ends), which is what lets an interrupted run continue from the last complete shard.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::clip::{Precision, Tokens};
use crate::disk::{write_atomic, write_bytes_atomic};

pub const FORMAT: &str = "saeclip-activations";
pub const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const IMAGES: &str = "images.csv";

/// The model the activations came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Where it was read from (provenance only: "" when a manifest lacks it).
    #[serde(default)]
    pub path: String,
    /// sha256 of the weights file.
    pub sha256: String,
}

/// The images the activations came from (provenance: "" where a manifest lacks a field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetRef {
    pub kind: String,
    pub path: String,
    pub split: String,
}

/// One slice of a dataset split over machines: every `count`-th image from `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

/// A file that could not be used, and why. Its index is never given to another image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub source: String,
    pub error: String,
    #[serde(default)]
    pub image_index: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub rows: usize,
}

/// One row of `images.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub image_index: usize,
    pub source: String,
    pub label: i64,
}

/// Everything that decides whether an existing cache can be reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub d_model: i64,
    pub dtype: Precision,
    pub layer: usize,
    pub tokens: Tokens,
    pub model: ModelRef,
    pub dataset: DatasetRef,
    #[serde(default)]
    pub part: Option<Part>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Side of the square model input, in pixels.
    pub image_size: i64,
}

/// `manifest.json`. Written in full; read leniently: only what reading and checking the
/// rows needs is required (`format`, `version`, `d_model`, `dtype`, `layer`, `tokens`,
/// `model.sha256`, `rows`, `shards`), the rest is provenance or reuse bookkeeping and may be
/// absent in a cache written by another program (`images` is then counted in `images.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub d_model: i64,
    pub dtype: Precision,
    pub layer: usize,
    pub tokens: Tokens,
    pub model: ModelRef,
    #[serde(default)]
    pub dataset: DatasetRef,
    pub rows: usize,
    #[serde(default)]
    pub images: usize,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    pub shards: Vec<ShardInfo>,
    #[serde(default)]
    pub part: Option<Part>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub image_size: i64,
    #[serde(default)]
    pub saeclip_version: String,
}

impl Manifest {
    pub fn key(&self) -> CacheKey {
        CacheKey {
            d_model: self.d_model,
            dtype: self.dtype,
            layer: self.layer,
            tokens: self.tokens,
            model: self.model.clone(),
            dataset: self.dataset.clone(),
            part: self.part,
            limit: self.limit,
            image_size: self.image_size,
        }
    }

    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a finished activation cache (no readable {MANIFEST}): run `saeclip extract` to create or finish it",
                dir.display()
            )
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let has_images = value.get("images").is_some();
        let mut manifest: Manifest = serde_json::from_value(value)
            .with_context(|| format!("{} is not a valid cache manifest", path.display()))?;
        ensure!(
            manifest.format == FORMAT,
            "{}: format is {:?}, expected {FORMAT:?}",
            path.display(),
            manifest.format
        );
        ensure!(
            manifest.version == VERSION,
            "{}: cache format version {} is not supported (this saeclip reads version {VERSION}): extract again",
            path.display(),
            manifest.version
        );
        if !has_images {
            manifest.images = count_images(dir)?;
        }
        Ok(manifest)
    }
}

/// Rows of `images.csv` in `dir` (0 when there is none).
fn count_images(dir: &Path) -> Result<usize> {
    let path = dir.join(IMAGES);
    if !path.exists() {
        return Ok(0);
    }
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    for row in reader.records() {
        row.with_context(|| format!("{} is damaged", path.display()))?;
        n += 1;
    }
    Ok(n)
}

/// A shard's sidecar while an extraction is running.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardMeta {
    key: CacheKey,
    file: String,
    rows: usize,
    /// Position (in the extraction's list of images) just past this shard's last image.
    end_position: usize,
    images: Vec<ImageRecord>,
    skipped: Vec<Skipped>,
}

fn shard_name(i: usize) -> String {
    format!("shard-{i:05}.safetensors")
}

fn meta_name(i: usize) -> String {
    format!("shard-{i:05}.meta.json")
}

/// What opening a cache directory for writing found.
pub enum Opened {
    /// A finished cache with the same key: nothing to do.
    Complete(Manifest),
    /// A writer positioned after the last complete shard (0 for a fresh cache).
    Writer(CacheWriter),
}

/// Writes shards as activations arrive; see the module docs.
pub struct CacheWriter {
    dir: PathBuf,
    key: CacheKey,
    shard_rows: usize,
    done: Vec<ShardMeta>,
    acts: Vec<Tensor>,
    image_index: Vec<Tensor>,
    token_index: Vec<Tensor>,
    rows: usize,
    images: Vec<ImageRecord>,
    skipped: Vec<Skipped>,
    position: usize,
}

/// Open `dir` for an extraction described by `key`. A finished cache with the same key is
/// returned as complete; a finished cache with another key, or unfinished shards of
/// another extraction, are an error unless `force`, which clears them.
pub fn open_writer(dir: &Path, key: CacheKey, shard_rows: usize, force: bool) -> Result<Opened> {
    ensure!(shard_rows > 0, "shard size must be at least one row");
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(MANIFEST).exists() {
        let existing = Manifest::read(dir);
        match existing {
            Ok(m) if m.key() == key && !force => return Ok(Opened::Complete(m)),
            Ok(m) if !force => bail!(
                "{} already holds a different extraction ({}): use another --out, or --force to replace it",
                dir.display(),
                describe_difference(&m.key(), &key)
            ),
            Err(e) if !force => return Err(e.context("use --force to replace it")),
            _ => clear(dir)?,
        }
    }
    let mut done = Vec::new();
    for i in 0.. {
        let meta_path = dir.join(meta_name(i));
        if !meta_path.exists() || !dir.join(shard_name(i)).exists() {
            break;
        }
        let meta: ShardMeta = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)
            .with_context(|| {
                format!(
                    "{} is damaged: use --force to start again",
                    meta_path.display()
                )
            })?;
        if meta.key != key {
            if !force {
                bail!(
                    "{} holds an unfinished extraction with other settings ({}): use another --out, or --force to replace it",
                    dir.display(),
                    describe_difference(&meta.key, &key)
                );
            }
            clear(dir)?;
            done.clear();
            break;
        }
        done.push(meta);
    }
    if force && done.is_empty() {
        clear(dir)?;
    }
    let position = done.last().map_or(0, |m| m.end_position);
    Ok(Opened::Writer(CacheWriter {
        dir: dir.to_path_buf(),
        key,
        shard_rows,
        done,
        acts: Vec::new(),
        image_index: Vec::new(),
        token_index: Vec::new(),
        rows: 0,
        images: Vec::new(),
        skipped: Vec::new(),
        position,
    }))
}

fn describe_difference(a: &CacheKey, b: &CacheKey) -> String {
    let ja = serde_json::to_value(a).unwrap_or_default();
    let jb = serde_json::to_value(b).unwrap_or_default();
    let mut diffs = Vec::new();
    if let (Some(ma), Some(mb)) = (ja.as_object(), jb.as_object()) {
        for (k, va) in ma {
            if mb.get(k) != Some(va) {
                diffs.push(format!(
                    "{k} {} vs {}",
                    va,
                    mb.get(k).cloned().unwrap_or_default()
                ));
            }
        }
    }
    diffs.join(", ")
}

/// Remove the files of a cache (and nothing else) from `dir`.
fn clear(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == MANIFEST || name == IMAGES || name.starts_with("shard-") {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

impl CacheWriter {
    /// Position in the extraction's image list of the next image to process.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Shards already complete when the writer was opened or since.
    pub fn complete_shards(&self) -> usize {
        self.done.len()
    }

    /// Add one image's rows: `acts` [K, D] (converted to the cache dtype on the CPU) and
    /// their token positions `token_index` [K].
    pub fn add_image(
        &mut self,
        record: ImageRecord,
        acts: &Tensor,
        token_index: &Tensor,
    ) -> Result<()> {
        let (k, d) = acts
            .size2()
            .context("activations must be [tokens, d_model]")?;
        ensure!(
            d == self.key.d_model,
            "activations have width {d}, the cache {}",
            self.key.d_model
        );
        ensure!(
            token_index.size() == [k],
            "token_index must have {k} entries"
        );
        self.acts.push(
            acts.to_device(tch::Device::Cpu)
                .to_kind(self.key.dtype.kind()),
        );
        self.image_index.push(Tensor::full(
            [k],
            record.image_index as i64,
            (Kind::Int64, tch::Device::Cpu),
        ));
        self.token_index
            .push(token_index.to_device(tch::Device::Cpu).to_kind(Kind::Int64));
        self.rows += k as usize;
        self.images.push(record);
        self.position += 1;
        Ok(())
    }

    /// Record an image that could not be used; its index stays unused.
    pub fn skip_image(&mut self, image_index: usize, source: String, error: String) {
        self.skipped.push(Skipped {
            source,
            error,
            image_index: Some(image_index),
        });
        self.position += 1;
    }

    /// Call at an image boundary: writes a shard once enough rows are buffered. Returns
    /// whether it wrote one.
    pub fn end_batch(&mut self) -> Result<bool> {
        if self.rows >= self.shard_rows {
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn flush(&mut self) -> Result<()> {
        let i = self.done.len();
        let file = shard_name(i);
        let acts = Tensor::cat(&std::mem::take(&mut self.acts), 0);
        let image_index = Tensor::cat(&std::mem::take(&mut self.image_index), 0);
        let token_index = Tensor::cat(&std::mem::take(&mut self.token_index), 0);
        let path = self.dir.join(&file);
        write_atomic(&path, |tmp| {
            Tensor::write_safetensors(
                &[
                    ("activations", &acts),
                    ("image_index", &image_index),
                    ("token_index", &token_index),
                ],
                tmp,
            )
            .with_context(|| format!("cannot write {}", tmp.display()))
        })?;
        let meta = ShardMeta {
            key: self.key.clone(),
            file,
            rows: self.rows,
            end_position: self.position,
            images: std::mem::take(&mut self.images),
            skipped: std::mem::take(&mut self.skipped),
        };
        write_bytes_atomic(&self.dir.join(meta_name(i)), &serde_json::to_vec(&meta)?)?;
        self.done.push(meta);
        self.rows = 0;
        Ok(())
    }

    /// Write the last shard, `images.csv` and finally `manifest.json`; remove sidecars.
    pub fn finish(mut self) -> Result<Manifest> {
        if self.rows > 0 {
            self.flush()?;
        }
        let mut images: Vec<ImageRecord> = self
            .done
            .iter()
            .flat_map(|m| m.images.iter().cloned())
            .collect();
        images.sort_by_key(|r| r.image_index);
        let mut skipped: Vec<Skipped> = self
            .done
            .iter()
            .flat_map(|m| m.skipped.iter().cloned())
            .collect();
        skipped.extend(std::mem::take(&mut self.skipped));
        skipped.sort_by_key(|s| s.image_index);
        write_atomic(&self.dir.join(IMAGES), |tmp| {
            let mut w = csv::Writer::from_path(tmp)?;
            for r in &images {
                w.serialize(r)?;
            }
            w.flush()?;
            Ok(())
        })?;
        let k = &self.key;
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            d_model: k.d_model,
            dtype: k.dtype,
            layer: k.layer,
            tokens: k.tokens,
            model: k.model.clone(),
            dataset: k.dataset.clone(),
            rows: self.done.iter().map(|m| m.rows).sum(),
            images: images.len(),
            skipped,
            shards: self
                .done
                .iter()
                .map(|m| ShardInfo {
                    file: m.file.clone(),
                    rows: m.rows,
                })
                .collect(),
            part: k.part,
            limit: k.limit,
            image_size: k.image_size,
            saeclip_version: env!("CARGO_PKG_VERSION").into(),
        };
        write_bytes_atomic(
            &self.dir.join(MANIFEST),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        for i in 0..self.done.len() {
            let _ = std::fs::remove_file(self.dir.join(meta_name(i)));
        }
        Ok(manifest)
    }
}

/// The rows of one shard (or of several, concatenated).
#[derive(Debug)]
pub struct Rows {
    pub activations: Tensor, // R, D
    pub image_index: Tensor, // R
    pub token_index: Tensor, // R
}

/// One shard file of a cache.
#[derive(Debug, Clone)]
pub struct ShardRef {
    pub path: PathBuf,
    pub rows: usize,
}

/// One or more finished caches read as one (e.g. the parts of a `--shard I/N` extraction).
#[derive(Debug, Clone)]
pub struct ActivationCache {
    parts: Vec<(PathBuf, Manifest)>,
}

impl ActivationCache {
    /// A cache directory, or a folder whose subdirectories are caches.
    pub fn open(path: &Path) -> Result<ActivationCache> {
        ActivationCache::open_many(&[path.to_path_buf()])
    }

    /// Several caches (or folders of caches) as one, after checking that they agree on
    /// model, layer, tokens, width and dtype and share no image.
    pub fn open_many(paths: &[PathBuf]) -> Result<ActivationCache> {
        ensure!(!paths.is_empty(), "no activation cache given");
        let mut parts = Vec::new();
        for path in paths {
            if !path.exists() {
                bail!(
                    "activation cache {} does not exist: create it with `saeclip extract`",
                    path.display()
                );
            }
            if path.join(MANIFEST).exists() || !path.is_dir() {
                parts.push((path.clone(), Manifest::read(path)?));
                continue;
            }
            let mut subdirs: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(MANIFEST).is_file())
                .collect();
            subdirs.sort();
            if subdirs.is_empty() {
                // No manifest anywhere: report the directory itself.
                Manifest::read(path)?;
            }
            let mut found: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
            for dir in subdirs {
                let m = Manifest::read(&dir)?;
                if let Some(p) = &m.part {
                    found.entry(p.count).or_default().insert(p.index);
                }
                parts.push((dir, m));
            }
            // A folder of `--shard I/N` parts is read as one only when all N are finished:
            // a part still running (or never started) would silently leave out its images.
            for (count, indices) in found {
                let missing: Vec<String> = (0..count)
                    .filter(|i| !indices.contains(i))
                    .map(|i| i.to_string())
                    .collect();
                ensure!(
                    missing.is_empty(),
                    "{}: part(s) {} of the {count}-part extraction are missing or unfinished: \
                     finish them (`extract --shard I/{count}`) before reading the folder",
                    path.display(),
                    missing.join(", ")
                );
            }
        }
        let first = &parts[0].1;
        for (dir, m) in &parts[1..] {
            let same = |what: &str, a: String, b: String| {
                ensure!(
                    a == b,
                    "caches {} and {} disagree on {what} ({a} vs {b}): they cannot be read as one",
                    parts[0].0.display(),
                    dir.display()
                );
                Ok(())
            };
            same("model", first.model.sha256.clone(), m.model.sha256.clone())?;
            same("layer", first.layer.to_string(), m.layer.to_string())?;
            same("tokens", first.tokens.name().into(), m.tokens.name().into())?;
            same("d_model", first.d_model.to_string(), m.d_model.to_string())?;
            same(
                "dtype",
                format!("{:?}", first.dtype),
                format!("{:?}", m.dtype),
            )?;
            same(
                "dataset",
                format!("{:?}", first.dataset),
                format!("{:?}", m.dataset),
            )?;
        }
        let cache = ActivationCache { parts };
        if cache.parts.len() > 1 {
            let mut seen = BTreeSet::new();
            for r in cache.images()? {
                ensure!(
                    seen.insert(r.image_index),
                    "image {} appears in more than one cache part",
                    r.image_index
                );
            }
        }
        Ok(cache)
    }

    /// The first part's manifest (all parts agree on everything but counts).
    pub fn manifest(&self) -> &Manifest {
        &self.parts[0].1
    }

    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.parts.iter().map(|(_, m)| m)
    }

    pub fn d_model(&self) -> i64 {
        self.manifest().d_model
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|(_, m)| m.rows).sum()
    }

    pub fn images_count(&self) -> usize {
        self.parts.iter().map(|(_, m)| m.images).sum()
    }

    pub fn shards(&self) -> Vec<ShardRef> {
        self.parts
            .iter()
            .flat_map(|(dir, m)| {
                m.shards.iter().map(move |s| ShardRef {
                    path: dir.join(&s.file),
                    rows: s.rows,
                })
            })
            .collect()
    }

    /// Read one shard, checking it against the manifest.
    pub fn read_shard(&self, shard: &ShardRef) -> Result<Rows> {
        let tensors = crate::clip::weights::read_safetensors(&shard.path)?;
        let get = |name: &str| -> Result<Tensor> {
            let i = tensors
                .iter()
                .position(|(n, _)| n == name)
                .with_context(|| format!("{}: tensor {name} is missing", shard.path.display()))?;
            Ok(tensors[i].1.shallow_clone())
        };
        let rows = Rows {
            activations: get("activations")?,
            image_index: get("image_index")?,
            token_index: get("token_index")?,
        };
        let r = shard.rows as i64;
        let d = self.d_model();
        ensure!(
            rows.activations.size() == [r, d]
                && rows.image_index.size() == [r]
                && rows.token_index.size() == [r],
            "{}: shapes {:?}/{:?}/{:?} do not match the manifest ([{r}, {d}] rows)",
            shard.path.display(),
            rows.activations.size(),
            rows.image_index.size(),
            rows.token_index.size()
        );
        ensure!(
            rows.activations.kind() == self.manifest().dtype.kind(),
            "{}: activations are {:?}, the manifest says {:?}",
            shard.path.display(),
            rows.activations.kind(),
            self.manifest().dtype
        );
        Ok(rows)
    }

    /// Every row, concatenated in shard order, activations converted to `kind`.
    pub fn load_all(&self, kind: Kind) -> Result<Rows> {
        let mut acts = Vec::new();
        let mut images = Vec::new();
        let mut tokens = Vec::new();
        for shard in self.shards() {
            let r = self.read_shard(&shard)?;
            acts.push(r.activations.to_kind(kind));
            images.push(r.image_index);
            tokens.push(r.token_index);
        }
        ensure!(!acts.is_empty(), "the activation cache has no rows");
        Ok(Rows {
            activations: Tensor::cat(&acts, 0),
            image_index: Tensor::cat(&images, 0),
            token_index: Tensor::cat(&tokens, 0),
        })
    }

    /// `images.csv` of every part, sorted by image index.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut all = Vec::new();
        for (dir, _) in &self.parts {
            let path = dir.join(IMAGES);
            let mut reader = csv::Reader::from_path(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for row in reader.deserialize() {
                all.push(row.with_context(|| format!("{} is damaged", path.display()))?);
            }
        }
        all.sort_by_key(|r: &ImageRecord| r.image_index);
        Ok(all)
    }
}

/// Hex sha256 of a file's bytes. The digest of a file of 64 MiB or more (a 600 MB model
/// takes about a second to hash) is remembered in `.saeclip-cache/sha256-<name>.json` next
/// to it, keyed by the file's size, modification time (ns) and inode; any change to those
/// recomputes it. A directory that cannot be written only means no remembering.
pub fn file_sha256(path: &Path) -> Result<String> {
    file_sha256_memo(path, MEMO_MIN_BYTES)
}

/// Files smaller than this are hashed every time (it is quick, and spares small files'
/// folders a `.saeclip-cache`).
const MEMO_MIN_BYTES: u64 = 64 << 20;

fn file_sha256_memo(path: &Path, min_bytes: u64) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    let stamp = FileStamp::of(&meta).filter(|s| s.size >= min_bytes);
    let memo = sha256_memo_path(path);
    if let (Some(memo), Some(stamp)) = (&memo, &stamp) {
        if let Some(sha) = std::fs::read(memo)
            .ok()
            .and_then(|b| serde_json::from_slice::<Sha256Memo>(&b).ok())
            .filter(|m| &m.stamp == stamp)
            .map(|m| m.sha256)
        {
            return Ok(sha);
        }
    }
    let sha = hash_file(path)?;
    if let (Some(memo), Some(stamp)) = (memo, stamp) {
        if memo
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        {
            let record = Sha256Memo {
                stamp,
                sha256: sha.clone(),
            };
            if let Ok(bytes) = serde_json::to_vec(&record) {
                let _ = write_bytes_atomic(&memo, &bytes);
            }
        }
    }
    Ok(sha)
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (u64 lasts until 2554).
    pub mtime_ns: u64,
    pub inode: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Option<FileStamp> {
        let mtime_ns = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos()
            .try_into()
            .ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            size: meta.len(),
            mtime_ns,
            inode,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Sha256Memo {
    #[serde(flatten)]
    stamp: FileStamp,
    sha256: String,
}

fn sha256_memo_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    Some(
        dir.join(".saeclip-cache")
            .join(format!("sha256-{name}.json")),
    )
}

/// Hex sha256 of a file's bytes, read in 1 MiB blocks.
fn hash_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memo gives back the digest while the file is unchanged, is used (a planted
    /// digest with a matching stamp is returned), and any change of size or time recomputes.
    #[test]
    fn sha256_memo_is_used_and_invalidated() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.bin");
        std::fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_sha256_memo(&f, 0).unwrap(), abc);
        let memo = sha256_memo_path(&f).unwrap();
        assert!(memo.is_file());
        // A planted digest under the same stamp is trusted: the memo is really read.
        let mut m: Sha256Memo = serde_json::from_slice(&std::fs::read(&memo).unwrap()).unwrap();
        m.sha256 = "planted".into();
        std::fs::write(&memo, serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(file_sha256_memo(&f, 0).unwrap(), "planted");
        // New content of a new size recomputes and rewrites the memo.
        std::fs::write(&f, b"abcd").unwrap();
        let abcd = "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589";
        assert_eq!(file_sha256_memo(&f, 0).unwrap(), abcd);
        assert_eq!(file_sha256_memo(&f, 0).unwrap(), abcd);
        // Same size, another modification time: recomputed too.
        let mut m: Sha256Memo = serde_json::from_slice(&std::fs::read(&memo).unwrap()).unwrap();
        m.sha256 = "planted".into();
        std::fs::write(&memo, serde_json::to_vec(&m).unwrap()).unwrap();
        let file = std::fs::File::options().write(true).open(&f).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(file_sha256_memo(&f, 0).unwrap(), abcd);
        // Small files are not memoised by the public function.
        let g = dir.path().join("small.bin");
        std::fs::write(&g, b"abc").unwrap();
        assert_eq!(file_sha256(&g).unwrap(), abc);
        assert!(!sha256_memo_path(&g).unwrap().exists());
    }
}
