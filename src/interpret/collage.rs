//! Collages: a feature's top images in a grid, each as CLIP saw it (resized and center
//! cropped), with a caption strip (feature id, rank, label) and each tile's activation,
//! drawn with the embedded DejaVu Sans Mono (assets/fonts, Bitstream Vera licence). For
//! patch-level SAEs each tile carries a heatmap of its per-patch activations.

use std::path::Path;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};

/// DejaVu Sans Mono (fonts-dejavu-core), licence in assets/fonts/DejaVuSansMono.LICENSE.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

/// Tile side in pixels.
pub const TILE: u32 = 224;
/// Gap between tiles and around the grid.
const GAP: u32 = 4;
/// Height of the caption strip.
const CAPTION: u32 = 30;
const BACKGROUND: Rgb<u8> = Rgb([24, 24, 28]);
const TEXT: Rgb<u8> = Rgb([240, 240, 240]);

/// Image file format of the collages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CollageFormat {
    #[default]
    Png,
    Jpg,
}

impl CollageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            CollageFormat::Png => "png",
            CollageFormat::Jpg => "jpg",
        }
    }
}

/// Grid shape: `rows`×`cols` tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub rows: u32,
    pub cols: u32,
}

impl Default for Grid {
    fn default() -> Self {
        Grid { rows: 4, cols: 3 }
    }
}

impl std::str::FromStr for Grid {
    type Err = String;
    /// `ROWSxCOLS`, e.g. `4x3`.
    fn from_str(s: &str) -> Result<Grid, String> {
        let (r, c) = s
            .split_once(['x', 'X', '×'])
            .ok_or_else(|| format!("{s:?}: expected ROWSxCOLS, e.g. 4x3"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| (1..=32).contains(&n))
        };
        match (parse(r), parse(c)) {
            (Some(rows), Some(cols)) => Ok(Grid { rows, cols }),
            _ => Err(format!(
                "{s:?}: rows and columns must be whole numbers from 1 to 32"
            )),
        }
    }
}

impl Grid {
    pub fn tiles(self) -> usize {
        (self.rows * self.cols) as usize
    }

    /// Pixel size of a collage with this grid.
    pub fn dimensions(self) -> (u32, u32) {
        (
            self.cols * TILE + (self.cols + 1) * GAP,
            CAPTION + self.rows * TILE + (self.rows + 1) * GAP,
        )
    }

    /// Top-left corner of tile `i` (row-major).
    pub fn tile_origin(self, i: usize) -> (u32, u32) {
        let (r, c) = (i as u32 / self.cols, i as u32 % self.cols);
        (GAP + c * (TILE + GAP), CAPTION + GAP + r * (TILE + GAP))
    }
}

/// One tile: the cropped image and its activation; `heat` (row-major side×side patch
/// activations) for patch-level SAEs.
#[derive(Debug, Clone)]
pub struct Tile {
    pub image: RgbImage,
    pub score: f32,
    pub heat: Option<(usize, Vec<f32>)>,
}

/// Draw a collage: `tiles` in row-major order (the caller orders them by activation).
pub fn render(grid: Grid, caption: &str, tiles: &[Tile]) -> Result<RgbImage> {
    let font = FontRef::try_from_slice(FONT).context("the embedded font is damaged")?;
    let (w, h) = grid.dimensions();
    let mut out = RgbImage::from_pixel(w, h, BACKGROUND);
    draw_text(&mut out, &font, 18.0, GAP as i32, 5, caption, TEXT);
    let heat_max = tiles
        .iter()
        .filter_map(|t| t.heat.as_ref())
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0f32, f32::max);
    for (i, tile) in tiles.iter().take(grid.tiles()).enumerate() {
        let mut img = if tile.image.dimensions() == (TILE, TILE) {
            tile.image.clone()
        } else {
            image::imageops::resize(
                &tile.image,
                TILE,
                TILE,
                image::imageops::FilterType::Triangle,
            )
        };
        if let Some((side, heat)) = &tile.heat {
            overlay_heat(&mut img, *side, heat, heat_max);
        }
        let label = format!("#{} {:.3}", i + 1, tile.score);
        let (tw, th) = (label.chars().count() as u32 * 8 + 6, 18);
        for y in TILE - th..TILE {
            for x in 0..tw.min(TILE) {
                let p = img.get_pixel_mut(x, y);
                *p = Rgb(p.0.map(|v| (v as u32 / 4) as u8));
            }
        }
        draw_text(
            &mut img,
            &font,
            14.0,
            3,
            (TILE - th + 2) as i32,
            &label,
            TEXT,
        );
        let (x, y) = grid.tile_origin(i);
        image::imageops::replace(&mut out, &img, x as i64, y as i64);
    }
    Ok(out)
}

/// Blend a red-to-yellow heatmap of `heat` (side×side, row-major) over `img`, its opacity
/// proportional to the value over `max`.
fn overlay_heat(img: &mut RgbImage, side: usize, heat: &[f32], max: f32) {
    if side == 0 || heat.len() != side * side || max <= 0.0 {
        return;
    }
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            let (py, px) = (
                (y as usize * side / h as usize).min(side - 1),
                (x as usize * side / w as usize).min(side - 1),
            );
            let v = (heat[py * side + px] / max).clamp(0.0, 1.0);
            if v <= 0.0 {
                continue;
            }
            let alpha = 0.65 * v;
            let colour = [255.0, 255.0 * v, 0.0];
            let p = img.get_pixel_mut(x, y);
            for (v, c) in p.0.iter_mut().zip(colour) {
                *v = (*v as f32 * (1.0 - alpha) + c * alpha).round() as u8;
            }
        }
    }
}

/// Draw `text` with its top-left at (x, y).
fn draw_text(
    img: &mut RgbImage,
    font: &FontRef,
    size: f32,
    x: i32,
    y: i32,
    text: &str,
    colour: Rgb<u8>,
) {
    let scale = PxScale::from(size);
    let scaled = font.as_scaled(scale);
    let mut caret = x as f32;
    let baseline = y as f32 + scaled.ascent();
    let (w, h) = img.dimensions();
    for ch in text.chars() {
        let id = scaled.glyph_id(ch);
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, baseline));
        caret += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, cov| {
            let px = b.min.x as i32 + gx as i32;
            let py = b.min.y as i32 + gy as i32;
            if px < 0 || py < 0 || px as u32 >= w || py as u32 >= h {
                return;
            }
            let p = img.get_pixel_mut(px as u32, py as u32);
            for (v, &c) in p.0.iter_mut().zip(&colour.0) {
                *v = (*v as f32 * (1.0 - cov) + c as f32 * cov).round() as u8;
            }
        });
    }
}

/// Save a collage as PNG or JPEG (by `format`), atomically.
pub fn save(img: &RgbImage, path: &Path, format: CollageFormat) -> Result<()> {
    let fmt = match format {
        CollageFormat::Png => image::ImageFormat::Png,
        CollageFormat::Jpg => image::ImageFormat::Jpeg,
    };
    crate::disk::write_atomic(path, |tmp| {
        img.save_with_format(tmp, fmt)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Make sure the collage directory can be written.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "--collage-dir {} exists and is not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_parses_and_sizes() {
        let g: Grid = "4x3".parse().unwrap();
        assert_eq!(g, Grid { rows: 4, cols: 3 });
        assert_eq!(g.tiles(), 12);
        assert_eq!(g.dimensions(), (3 * 224 + 16, 30 + 4 * 224 + 20));
        assert!("4".parse::<Grid>().is_err());
        assert!("0x3".parse::<Grid>().is_err());
    }

    #[test]
    fn renders_text_and_tiles() {
        let tile = Tile {
            image: RgbImage::from_pixel(224, 224, Rgb([200, 10, 10])),
            score: 1.5,
            heat: None,
        };
        let img = render(Grid { rows: 1, cols: 2 }, "feature 7", &[tile]).unwrap();
        assert_eq!(img.dimensions(), Grid { rows: 1, cols: 2 }.dimensions());
        // the caption drew something light on the dark strip
        let lit = (0..200)
            .flat_map(|x| (0..CAPTION).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0[0] > 128)
            .count();
        assert!(lit > 20);
        let (x, y) = Grid { rows: 1, cols: 2 }.tile_origin(0);
        assert_eq!(img.get_pixel(x + 100, y + 50).0, [200, 10, 10]);
    }

    /// A 2×2 heatmap on a grey tile: the hottest patch's quadrant is blended 65% towards
    /// yellow, a half-hot one 32.5% towards orange, cold patches are left as they were, and
    /// the scale is the maximum over all tiles of the collage.
    #[test]
    fn heatmap_overlay_pixels() {
        let grey = Rgb([100, 100, 100]);
        let tile = |heat: Vec<f32>| Tile {
            image: RgbImage::from_pixel(224, 224, grey),
            score: 1.0,
            heat: Some((2, heat)),
        };
        let grid = Grid { rows: 1, cols: 2 };
        // Tile 2 holds the collage's maximum (4), so tile 1's 2 is half-hot.
        let tiles = [
            tile(vec![2.0, 0.0, 0.0, 1.0]),
            tile(vec![4.0, 0.0, 0.0, 0.0]),
        ];
        let img = render(grid, "heat", &tiles).unwrap();
        let at = |t: usize, x: u32, y: u32| {
            let (ox, oy) = grid.tile_origin(t);
            img.get_pixel(ox + x, oy + y).0
        };
        let blend = |v: f32| {
            let a = 0.65 * v;
            [255.0, 255.0 * v, 0.0].map(|c: f32| (100.0 * (1.0 - a) + c * a).round() as u8)
        };
        assert_eq!(at(1, 50, 50), blend(1.0)); // top-left of tile 2: the maximum
        assert_eq!(at(1, 170, 50), grey.0); // top-right: cold
        assert_eq!(at(0, 50, 50), blend(0.5)); // top-left of tile 1: half the maximum
        assert_eq!(at(0, 50, 170), grey.0); // bottom-left: cold
        assert_eq!(at(0, 170, 150), blend(0.25)); // bottom-right, above the score strip
                                                  // Patch boundaries fall at half the tile.
        assert_eq!(at(0, 111, 50), blend(0.5));
        assert_eq!(at(0, 112, 50), grey.0);
    }
}
