//! A generated dataset for demos and tests: coloured shapes with textures on varied
//! backgrounds, labelled by colour and shape, the same bytes on every machine.
//!
//! # Factors
//!
//! - shape: circle, square, triangle, star, ring, cross (each fits a circle of `radius`);
//! - colour: red, green, blue, yellow, purple, orange, white, black (fixed, well separated
//!   RGB values with ±8 jitter per channel, the same for all three channels of white and
//!   black; see [`Colour::rgb`]);
//! - texture: solid, striped, dotted, checkered (the pattern alternates the colour with a
//!   darker shade of it, a lighter grey for black, so the colour stays recognisable);
//! - background: sky, sand, grass, slate, dusk (muted two-colour linear gradients at a
//!   random angle) and noise (smooth grey value noise), all with light grain;
//! - geometry: the image is square with `side` in {160, 192, 224, 256, 288} (so resizing
//!   is exercised), the shape's centre (`x`, `y`) and `radius` (24–38 % of the side) are
//!   whole pixels and keep the shape inside the image, `rotation` is in whole degrees.
//!
//! The class is colour + shape, `"red circle"` (`procedural:SEED/shape` labels by shape
//! alone, 6 classes, and `procedural:SEED/colour-shape-texture` by all three, 192 classes
//! such as `"striped red circle"`: the same images, labelled differently); classes are listed colour-major
//! (`red circle`, `red square`, …, `black cross`), 48 in all. Image `i` has class
//! `i mod 48` and texture `(i / 48) mod 4`; the other factors are drawn from a seeded
//! generator. Train has 4,800 images (100 per class), test 960 (20 per class); the split
//! is part of the seed, so the two splits differ.
//!
//! The source string records the factors, e.g.
//! `procedural:7/train/000052?shape=ring&colour=red&texture=striped&background=noise&side=160&x=109&y=60&radius=42&rotation=234`,
//! and [`ProceduralFactors::from_source`] reads them back.
//!
//! # Determinism
//!
//! Everything is computed with a hand-written SplitMix64 generator, integer arithmetic and
//! f32/f64 addition, multiplication, division, square root and floor, which IEEE 754
//! rounds exactly (Rust never fuses them), so every target with IEEE floats (all tier-1
//! targets) gives the same bytes; sines come from a Taylor polynomial rather than the
//! platform's libm. `tests/datasets.rs` pins a hash of the first images. The edges are
//! antialiased: exact horizontal coverage of each pixel over five sub-rows.

use std::collections::HashMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use image::{GrayImage, RgbImage};

use super::{out_of_range, Dataset, DatasetKind, DatasetSpec, Item, Split};

mod classes;
use crate::clip::preprocess::PreprocessError;
pub use classes::ProceduralClasses;

/// A factor with a fixed list of named values.
macro_rules! factor {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in label order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used in class names and sources.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value with this name.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name() == name)
            }

            /// Position in [`Self::ALL`].
            pub fn position(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

factor!(
    /// The drawn shape.
    Shape {
        Circle = "circle",
        Square = "square",
        Triangle = "triangle",
        Star = "star",
        Ring = "ring",
        Cross = "cross",
    }
);

factor!(
    /// The shape's colour.
    Colour {
        Red = "red",
        Green = "green",
        Blue = "blue",
        Yellow = "yellow",
        Purple = "purple",
        Orange = "orange",
        White = "white",
        Black = "black",
    }
);

factor!(
    /// The pattern on the shape.
    Texture {
        Solid = "solid",
        Striped = "striped",
        Dotted = "dotted",
        Checkered = "checkered",
    }
);

factor!(
    /// What is behind the shape.
    Background {
        Sky = "sky",
        Sand = "sand",
        Grass = "grass",
        Slate = "slate",
        Dusk = "dusk",
        Noise = "noise",
    }
);

impl Colour {
    /// The nominal RGB value (each image jitters it by up to ±8 per channel; white and
    /// black by one offset for all channels).
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [40, 165, 60],
            Colour::Blue => [35, 85, 220],
            Colour::Yellow => [235, 215, 35],
            Colour::Purple => [135, 55, 185],
            Colour::Orange => [240, 135, 20],
            Colour::White => [245, 245, 245],
            Colour::Black => [25, 25, 25],
        }
    }
}

impl Background {
    /// The two ends of the gradient (jittered per image); unused for `Noise`.
    fn ends(self) -> [[f32; 3]; 2] {
        match self {
            Background::Sky => [[90., 135., 185.], [190., 205., 220.]],
            Background::Sand => [[205., 185., 145.], [150., 125., 95.]],
            Background::Grass => [[90., 120., 80.], [160., 175., 120.]],
            Background::Slate => [[65., 75., 90.], [135., 140., 150.]],
            Background::Dusk => [[115., 95., 140.], [205., 160., 145.]],
            Background::Noise => [[128., 128., 128.], [128., 128., 128.]],
        }
    }
}

/// Everything that names one generated image; rendering adds only nuisance detail
/// (colour jitter, texture period and phase, background tint, grain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProceduralFactors {
    pub shape: Shape,
    pub colour: Colour,
    pub texture: Texture,
    pub background: Background,
    /// Width and height of the image in pixels.
    pub side: u32,
    /// Centre of the shape, pixels from the left.
    pub x: u32,
    /// Centre of the shape, pixels from the top.
    pub y: u32,
    /// Radius of the circle the shape fits in, pixels.
    pub radius: u32,
    /// Clockwise rotation in degrees, 0..360.
    pub rotation: u32,
}

impl ProceduralFactors {
    /// The class label: `colour × 6 + shape`.
    pub fn label(&self) -> usize {
        self.colour.position() * Shape::ALL.len() + self.shape.position()
    }

    /// The class name, e.g. `"red circle"`.
    pub fn class_name(&self) -> String {
        format!("{} {}", self.colour, self.shape)
    }

    /// The factors as `key=value&…`, the part of a source after `?`.
    pub fn query(&self) -> String {
        format!(
            "shape={}&colour={}&texture={}&background={}&side={}&x={}&y={}&radius={}&rotation={}",
            self.shape,
            self.colour,
            self.texture,
            self.background,
            self.side,
            self.x,
            self.y,
            self.radius,
            self.rotation
        )
    }

    /// Read the factors back from a source string (or just its `key=value&…` part).
    pub fn from_source(source: &str) -> Result<Self> {
        let query = source.split_once('?').map_or(source, |(_, q)| q);
        let mut map = HashMap::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').with_context(|| {
                format!("procedural source `{source}`: `{pair}` is not KEY=VALUE")
            })?;
            if map.insert(k, v).is_some() {
                bail!("procedural source `{source}`: `{k}` appears twice");
            }
        }
        let mut take = |key: &str| {
            map.remove(key)
                .with_context(|| format!("procedural source `{source}`: no `{key}`"))
        };
        fn named<T>(
            source: &str,
            key: &str,
            value: &str,
            parse: fn(&str) -> Option<T>,
        ) -> Result<T> {
            parse(value)
                .with_context(|| format!("procedural source `{source}`: unknown {key} `{value}`"))
        }
        let number = |key: &str, value: &str| -> Result<u32> {
            value
                .parse()
                .with_context(|| format!("procedural source `{source}`: bad {key} `{value}`"))
        };
        let factors = ProceduralFactors {
            shape: named(source, "shape", take("shape")?, Shape::from_name)?,
            colour: named(source, "colour", take("colour")?, Colour::from_name)?,
            texture: named(source, "texture", take("texture")?, Texture::from_name)?,
            background: named(
                source,
                "background",
                take("background")?,
                Background::from_name,
            )?,
            side: number("side", take("side")?)?,
            x: number("x", take("x")?)?,
            y: number("y", take("y")?)?,
            radius: number("radius", take("radius")?)?,
            rotation: number("rotation", take("rotation")?)?,
        };
        if let Some(key) = map.keys().next() {
            bail!("procedural source `{source}`: unknown key `{key}`");
        }
        Ok(factors)
    }
}

/// The generated dataset `procedural:SEED[/CLASSES]` for one split.
pub struct Procedural {
    spec: DatasetSpec,
    split: Split,
    seed: u64,
    task: ProceduralClasses,
    classes: Vec<String>,
    /// Class-map classes: background, then the shapes.
    regions: Vec<String>,
}

/// Colour × shape pairs: image `i` draws pair `i mod PAIRS`.
const PAIRS: usize = 48;

impl Procedural {
    /// Images in the train split (100 per class).
    pub const TRAIN_LEN: usize = 4_800;
    /// Images in the test split (20 per class).
    pub const TEST_LEN: usize = 960;

    pub fn new(seed: u64, split: Split) -> Self {
        Self::with_classes(seed, ProceduralClasses::ColourShape, split)
    }

    /// The same images, labelled by `task`'s factors.
    pub fn with_classes(seed: u64, task: ProceduralClasses, split: Split) -> Self {
        let path = match task {
            ProceduralClasses::ColourShape => seed.to_string(),
            t => format!("{seed}/{}", t.name()),
        };
        Procedural {
            spec: DatasetSpec {
                kind: DatasetKind::Procedural,
                path,
            },
            split,
            seed,
            task,
            classes: task.names(),
            regions: std::iter::once("background")
                .chain(Shape::ALL.iter().map(|s| s.name()))
                .map(String::from)
                .collect(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The seed of image `index`'s generator, different for every seed, split and index.
    fn key(&self, index: usize) -> u64 {
        let split = match self.split {
            Split::Train => 1,
            Split::Test => 2,
        };
        mix(mix(mix(self.seed ^ 0x5AEC_11B0_0DA7_A5E7) ^ split) ^ index as u64)
    }

    /// The factors of image `index`.
    pub fn factors(&self, index: usize) -> ProceduralFactors {
        if index >= self.len() {
            out_of_range(&self.spec, index, self.len());
        }
        let class = index % PAIRS;
        let mut rng = Rng(self.key(index));
        let side = 160 + 32 * rng.below(5);
        let radius = side * 24 / 100 + rng.below(side * 14 / 100 + 1);
        let margin = radius + 2;
        let x = margin + rng.below(side - 2 * margin + 1);
        let y = margin + rng.below(side - 2 * margin + 1);
        let rotation = rng.below(360);
        let background = Background::ALL[rng.below(Background::ALL.len() as u32) as usize];
        ProceduralFactors {
            shape: Shape::ALL[class % Shape::ALL.len()],
            colour: Colour::ALL[class / Shape::ALL.len()],
            texture: Texture::ALL[index / PAIRS % Texture::ALL.len()],
            background,
            side,
            x,
            y,
            radius,
            rotation,
        }
    }

    /// How much of each pixel of image `index` the shape covers (255 = all of it).
    pub fn mask(&self, index: usize) -> GrayImage {
        let f = self.factors(index);
        let coverage = rasterize(&Outline::of(&f), f.side as usize);
        let data = coverage.iter().map(|&c| to_u8(c * 255.0)).collect();
        GrayImage::from_raw(f.side, f.side, data).expect("side² coverage values")
    }

    /// Draw image `index`.
    fn render(&self, index: usize) -> RgbImage {
        let f = self.factors(index);
        let side = f.side as usize;
        let mut rng = Rng(mix(self.key(index) ^ 0x7E4D_E2C0_11A5_0F1E));
        let coverage = rasterize(&Outline::of(&f), side);

        let base = match f.colour {
            // Greys stay grey: one offset for all channels.
            Colour::White | Colour::Black => {
                let offset = rng.signed(8) as f32;
                f.colour.rgb().map(|v| f32::from(v) + offset)
            }
            _ => f.colour.rgb().map(|v| f32::from(v) + rng.signed(8) as f32),
        };
        let alternate = match f.colour {
            Colour::Black => base.map(|v| v + 75.0),
            _ => base.map(|v| v * 0.7),
        };
        let pattern = Pattern::new(f.texture, f.radius as f32, &mut rng);
        let paint = Paint::new(f.background, side, &mut rng);
        let (sin, cos) = sin_cos_degrees(f.rotation);
        let (cx, cy) = (f.x as f32, f.y as f32);

        let mut grain = Rng(rng.next_u64());
        let mut data = Vec::with_capacity(side * side * 3);
        for y in 0..side {
            for x in 0..side {
                let g = grain.signed(4) as f32;
                let mut rgb = paint.at(x, y).map(|v| v + g);
                let a = coverage[y * side + x];
                if a > 0.0 {
                    // Shape coordinates: texture turns with the shape.
                    let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                    let u = dx * cos + dy * sin;
                    let v = dy * cos - dx * sin;
                    let fg = if pattern.alternate(u, v) {
                        alternate
                    } else {
                        base
                    };
                    for k in 0..3 {
                        rgb[k] += (fg[k] - rgb[k]) * a;
                    }
                }
                data.extend(rgb.map(to_u8));
            }
        }
        RgbImage::from_raw(f.side, f.side, data).expect("side²×3 bytes")
    }
}

impl Dataset for Procedural {
    fn spec(&self) -> &DatasetSpec {
        &self.spec
    }
    fn split(&self) -> Split {
        self.split
    }
    fn len(&self) -> usize {
        match self.split {
            Split::Train => Self::TRAIN_LEN,
            Split::Test => Self::TEST_LEN,
        }
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn item(&self, index: usize) -> Item {
        let f = self.factors(index);
        Item {
            index,
            source: format!(
                "procedural:{}/{}/{index:06}?{}",
                self.seed,
                self.split,
                f.query()
            ),
            label: self.task.label(&f) as i64,
        }
    }
    fn image(&self, index: usize) -> Result<RgbImage, PreprocessError> {
        Ok(self.render(index))
    }
    fn class_map_names(&self) -> &[String] {
        &self.regions
    }
    /// Background 0; the shape's class (1 + its position in `Shape::ALL`) where the shape
    /// covers at least half of a pixel.
    fn class_map(&self, index: usize) -> Option<anyhow::Result<super::ClassMap>> {
        let shape = 1 + self.factors(index).shape.position() as u16;
        let mask = self.mask(index);
        let (w, h) = mask.dimensions();
        let classes = mask
            .into_raw()
            .into_iter()
            .map(|c| if c >= 128 { shape } else { 0 })
            .collect();
        Some(super::ClassMap::new(w, h, classes))
    }
}

/// Round and clamp to a byte.
fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// SplitMix64's step: a well-mixed hash of `z`.
fn mix(z: u64) -> u64 {
    finalize(z.wrapping_add(0x9E37_79B9_7F4A_7C15))
}

/// SplitMix64's output function.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a tiny generator whose sequence is fixed by its seed on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.0)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// Uniform in `-amplitude..=amplitude`.
    fn signed(&mut self, amplitude: u32) -> i32 {
        self.below(2 * amplitude + 1) as i32 - amplitude as i32
    }

    /// Uniform in [0, 1), a multiple of 2⁻²⁴ (exact in f32).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }
}

/// Sine and cosine of a whole number of degrees, from a Taylor polynomial on [0°, 90°)
/// (error below 1e-15) so that no libm is involved.
fn sin_cos_degrees(degrees: u32) -> (f32, f32) {
    let d = degrees % 360;
    let x = f64::from(d % 90) * (std::f64::consts::PI / 180.0);
    let x2 = x * x;
    let (mut s, mut c) = (x, 1.0);
    let (mut ts, mut tc) = (x, 1.0);
    for k in 1..=10 {
        let k = f64::from(k);
        ts *= -x2 / ((2.0 * k) * (2.0 * k + 1.0));
        tc *= -x2 / ((2.0 * k - 1.0) * (2.0 * k));
        s += ts;
        c += tc;
    }
    let (s, c) = match d / 90 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    };
    (s as f32, c as f32)
}

/// The outline of a placed shape, for scanline rasterisation.
enum Outline {
    /// A disc of radius `outer`, with a hole of radius `inner` (0 for none).
    Round {
        cx: f32,
        cy: f32,
        outer: f32,
        inner: f32,
    },
    /// A simple polygon (even-odd fill).
    Polygon(Vec<[f32; 2]>),
}

impl Outline {
    fn of(f: &ProceduralFactors) -> Outline {
        let (cx, cy, r) = (f.x as f32, f.y as f32, f.radius as f32);
        let round = |inner: f32| Outline::Round {
            cx,
            cy,
            outer: r,
            inner: r * inner,
        };
        // Unit-circle vertices at whole-degree angles (0° = right, 90° = down).
        let polar = |degrees: i32, radius: f32| {
            let (s, c) = sin_cos_degrees(degrees.rem_euclid(360) as u32);
            [radius * c, radius * s]
        };
        let unit: Vec<[f32; 2]> = match f.shape {
            Shape::Circle => return round(0.0),
            Shape::Ring => return round(0.55),
            Shape::Square => (0..4).map(|k| polar(45 + 90 * k, 1.0)).collect(),
            Shape::Triangle => (0..3).map(|k| polar(-90 + 120 * k, 1.0)).collect(),
            Shape::Star => (0..10)
                .map(|k| polar(-90 + 36 * k, if k % 2 == 0 { 1.0 } else { 0.5 }))
                .collect(),
            Shape::Cross => {
                let (w, l) = (0.3, 0.95);
                vec![
                    [w, -l],
                    [w, -w],
                    [l, -w],
                    [l, w],
                    [w, w],
                    [w, l],
                    [-w, l],
                    [-w, w],
                    [-l, w],
                    [-l, -w],
                    [-w, -w],
                    [-w, -l],
                ]
            }
        };
        let (s, c) = sin_cos_degrees(f.rotation);
        Outline::Polygon(
            unit.into_iter()
                .map(|[ux, uy]| [cx + r * (ux * c - uy * s), cy + r * (ux * s + uy * c)])
                .collect(),
        )
    }

    /// Rows that can hold part of the shape.
    fn rows(&self, side: usize) -> std::ops::Range<usize> {
        let (top, bottom) = match self {
            Outline::Round { cy, outer, .. } => (cy - outer, cy + outer),
            Outline::Polygon(v) => v.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| {
                (lo.min(p[1]), hi.max(p[1]))
            }),
        };
        let top = top.floor().max(0.0) as usize;
        let bottom = (bottom.ceil().max(0.0) as usize + 1).min(side);
        top.min(bottom)..bottom
    }

    /// The x positions where the horizontal line at `y` crosses the outline, ascending;
    /// consecutive pairs bound the inside.
    fn crossings(&self, y: f32, xs: &mut Vec<f32>) {
        xs.clear();
        match *self {
            Outline::Round {
                cx,
                cy,
                outer,
                inner,
            } => {
                let dy2 = (y - cy) * (y - cy);
                let h2 = outer * outer - dy2;
                if h2 > 0.0 {
                    let h = h2.sqrt();
                    let i2 = inner * inner - dy2;
                    if i2 > 0.0 {
                        let i = i2.sqrt();
                        xs.extend([cx - h, cx - i, cx + i, cx + h]);
                    } else {
                        xs.extend([cx - h, cx + h]);
                    }
                }
            }
            Outline::Polygon(ref v) => {
                for (i, a) in v.iter().enumerate() {
                    let b = v[(i + 1) % v.len()];
                    if (a[1] <= y) != (b[1] <= y) {
                        xs.push(a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]));
                    }
                }
                xs.sort_by(f32::total_cmp);
            }
        }
    }
}

/// Sub-rows per pixel row for vertical antialiasing.
const SUB_ROWS: usize = 5;

/// Coverage of each pixel (row-major, side × side) by the outline, in [0, 1].
fn rasterize(outline: &Outline, side: usize) -> Vec<f32> {
    let mut coverage = vec![0.0f32; side * side];
    let weight = 1.0 / SUB_ROWS as f32;
    let mut xs = Vec::with_capacity(16);
    for row in outline.rows(side) {
        let line = &mut coverage[row * side..(row + 1) * side];
        for s in 0..SUB_ROWS {
            let y = row as f32 + (s as f32 + 0.5) * weight;
            outline.crossings(y, &mut xs);
            for span in xs.chunks_exact(2) {
                add_span(line, span[0], span[1], weight);
            }
        }
    }
    for c in &mut coverage {
        *c = c.min(1.0);
    }
    coverage
}

/// Add `weight` × (length of [a, b) inside each pixel) to a row of coverage.
fn add_span(line: &mut [f32], a: f32, b: f32, weight: f32) {
    let (a, b) = (a.max(0.0), b.min(line.len() as f32));
    if b <= a {
        return;
    }
    let first = a as usize;
    let last = (b.ceil() as usize).min(line.len()) - 1;
    if first == last {
        line[first] += (b - a) * weight;
        return;
    }
    line[first] += ((first + 1) as f32 - a) * weight;
    for c in &mut line[first + 1..last] {
        *c += weight;
    }
    line[last] += (b - last as f32) * weight;
}

/// Where the texture shows the alternate shade, in shape coordinates.
struct Pattern {
    texture: Texture,
    period: f32,
    phase: [f32; 2],
}

impl Pattern {
    fn new(texture: Texture, radius: f32, rng: &mut Rng) -> Self {
        let period = radius * (0.22 + 0.12 * rng.unit());
        let phase = [rng.unit() * period, rng.unit() * period];
        Pattern {
            texture,
            period,
            phase,
        }
    }

    fn alternate(&self, u: f32, v: f32) -> bool {
        let a = (u + self.phase[0]) / self.period;
        let b = (v + self.phase[1]) / self.period;
        match self.texture {
            Texture::Solid => false,
            Texture::Striped => a.floor() as i64 & 1 == 1,
            Texture::Checkered => (a.floor() as i64 + b.floor() as i64) & 1 == 1,
            Texture::Dotted => {
                let (da, db) = (a - a.floor() - 0.5, b - b.floor() - 0.5);
                da * da + db * db < 0.32 * 0.32
            }
        }
    }
}

/// A background painter.
enum Paint {
    /// Linear blend of two colours along a direction, spanning the image's diagonal.
    Gradient {
        from: [f32; 3],
        to: [f32; 3],
        dir: [f32; 2],
        half: f32,
        scale: f32,
    },
    /// Smoothly interpolated grey values on a coarse `cells` × `cells` grid.
    Noise {
        grid: Vec<[f32; 3]>,
        cells: usize,
        step: f32,
    },
}

impl Paint {
    fn new(background: Background, side: usize, rng: &mut Rng) -> Self {
        if background == Background::Noise {
            let cells = 3 + rng.below(4) as usize;
            let grid = (0..(cells + 1) * (cells + 1))
                .map(|_| {
                    let grey = 85.0 + rng.below(96) as f32;
                    [0; 3].map(|_| grey + rng.signed(8) as f32)
                })
                .collect();
            return Paint::Noise {
                grid,
                cells,
                step: cells as f32 / side as f32,
            };
        }
        let [from, to] = background
            .ends()
            .map(|end| end.map(|v| v + rng.signed(12) as f32));
        let (s, c) = sin_cos_degrees(rng.below(360));
        Paint::Gradient {
            from,
            to,
            dir: [c, s],
            half: side as f32 / 2.0,
            // Projections onto `dir` stay within ±side/√2.
            scale: 1.0 / (side as f32 * std::f32::consts::SQRT_2),
        }
    }

    fn at(&self, x: usize, y: usize) -> [f32; 3] {
        match self {
            Paint::Gradient {
                from,
                to,
                dir,
                half,
                scale,
            } => {
                let (dx, dy) = (x as f32 + 0.5 - half, y as f32 + 0.5 - half);
                let t = ((dx * dir[0] + dy * dir[1]) * scale + 0.5).clamp(0.0, 1.0);
                [0, 1, 2].map(|k| from[k] + (to[k] - from[k]) * t)
            }
            Paint::Noise { grid, cells, step } => {
                let cell = |p: usize| {
                    let g = (p as f32 + 0.5) * step;
                    let i = (g as usize).min(cells - 1);
                    let f = g - i as f32;
                    (i, f * f * (3.0 - 2.0 * f))
                };
                let ((i, fx), (j, fy)) = (cell(x), cell(y));
                let n = cells + 1;
                let (p00, p10) = (grid[j * n + i], grid[j * n + i + 1]);
                let (p01, p11) = (grid[(j + 1) * n + i], grid[(j + 1) * n + i + 1]);
                [0, 1, 2].map(|k| {
                    let top = p00[k] + (p10[k] - p00[k]) * fx;
                    let bottom = p01[k] + (p11[k] - p01[k]) * fx;
                    top + (bottom - top) * fy
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sines_match_libm_closely() {
        for d in 0..720 {
            let (s, c) = sin_cos_degrees(d);
            let r = f64::from(d).to_radians();
            assert!((f64::from(s) - r.sin()).abs() < 1e-6, "sin {d}");
            assert!((f64::from(c) - r.cos()).abs() < 1e-6, "cos {d}");
        }
        assert_eq!(sin_cos_degrees(90), (1.0, 0.0));
        assert_eq!(sin_cos_degrees(180), (0.0, -1.0));
    }

    #[test]
    fn coverage_area_matches_geometry() {
        let side = 200;
        let area = |o: &Outline| {
            rasterize(o, side)
                .iter()
                .map(|&c| f64::from(c))
                .sum::<f64>()
        };
        let disc = Outline::Round {
            cx: 100.0,
            cy: 90.5,
            outer: 50.0,
            inner: 0.0,
        };
        let expected = std::f64::consts::PI * 2500.0;
        assert!(
            (area(&disc) - expected).abs() / expected < 0.002,
            "{}",
            area(&disc)
        );
        let ring = Outline::Round {
            cx: 100.0,
            cy: 100.0,
            outer: 50.0,
            inner: 25.0,
        };
        let expected = std::f64::consts::PI * (2500.0 - 625.0);
        assert!((area(&ring) - expected).abs() / expected < 0.003);
        // A pixel-aligned square is covered exactly, edges included.
        let square = Outline::Polygon(vec![[10.0, 20.0], [30.0, 20.0], [30.0, 50.0], [10.0, 50.0]]);
        let cov = rasterize(&square, side);
        assert!((area(&square) - 600.0).abs() < 1e-3);
        assert_eq!(cov[20 * side + 10], 1.0);
        assert_eq!(cov[19 * side + 10], 0.0);
        assert_eq!(cov[20 * side + 30], 0.0);
        // Half-pixel edges give half coverage.
        let half = Outline::Polygon(vec![[10.5, 20.0], [30.0, 20.0], [30.0, 50.0], [10.5, 50.0]]);
        assert!((rasterize(&half, side)[30 * side + 10] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn shapes_stay_inside_and_have_area() {
        let data = Procedural::new(3, Split::Test);
        for index in 0..96 {
            let f = data.factors(index);
            let mask = data.mask(index);
            let side = f.side;
            let covered: u64 = mask.pixels().map(|p| u64::from(p[0])).sum();
            let frac = covered as f64 / 255.0 / f64::from(f.radius * f.radius);
            // Ring: π(1 - 0.55²) ≈ 2.19; star ≈ 1.47; triangle ≈ 1.30 (times r²).
            assert!((1.0..3.2).contains(&frac), "{index} {f:?}: {frac}");
            for i in 0..side {
                for edge in [(0, i), (side - 1, i), (i, 0), (i, side - 1)] {
                    assert_eq!(mask.get_pixel(edge.0, edge.1)[0], 0, "{f:?}");
                }
            }
        }
    }

    #[test]
    fn rng_is_fixed() {
        let mut r = Rng(0);
        // SplitMix64's published first output for seed 0.
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.unit())));
    }
}
