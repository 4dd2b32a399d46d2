//! Per-pixel ground truth for the patch-token probes of `evaluate`: a [`ClassMap`] gives
//! every pixel of an image a class (0 = background or unlabelled), and
//! [`ClassMap::patch_classes`] carries it through CLIP's resize and centre crop onto the
//! patch grid, one class per patch (the class of most of its pixels).
//!
//! Procedural images give background 0 and their shape's class (1 + its position in
//! `Shape::ALL`) where the shape covers at least half a pixel; ADE20K gives its
//! annotation PNGs as they are (0 = other, 1–150 the SceneParsing classes).

use anyhow::{bail, ensure, Context, Result};
use image::DynamicImage;

use crate::clip::preprocess::{crop_offset, resized_dimensions, PreprocessConfig, Resize};

/// One class per pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    pub width: u32,
    pub height: u32,
    pub classes: Vec<u16>,
}

impl ClassMap {
    /// A map from its pixels; `classes.len()` must be `width · height`.
    pub fn new(width: u32, height: u32, classes: Vec<u16>) -> Result<ClassMap> {
        ensure!(
            classes.len() == width as usize * height as usize,
            "a {width}×{height} class map needs {} values, not {}",
            width as usize * height as usize,
            classes.len()
        );
        Ok(ClassMap {
            width,
            height,
            classes,
        })
    }

    /// A single-channel PNG (8 or 16 bits) whose values are the classes. A palette or
    /// colour image is refused: its pixel values are not class indices.
    pub fn read_png(path: &std::path::Path) -> Result<ClassMap> {
        let img = image::ImageReader::open(path)
            .with_context(|| format!("cannot open the class map {}", path.display()))?
            .with_guessed_format()
            .with_context(|| format!("cannot read the class map {}", path.display()))?
            .decode()
            .with_context(|| format!("cannot decode the class map {}", path.display()))?;
        let (w, h) = (img.width(), img.height());
        let classes = match img {
            DynamicImage::ImageLuma8(g) => g.into_raw().into_iter().map(u16::from).collect(),
            DynamicImage::ImageLuma16(g) => g.into_raw(),
            other => bail!(
                "the class map {} is {:?}, not a single-channel (grey) image of class indices",
                path.display(),
                other.color()
            ),
        };
        ClassMap::new(w, h, classes)
    }

    /// The class of most of each patch's pixels after `prep`'s resize and centre crop
    /// (nearest-neighbour, as class maps are resized), the `grid` × `grid` patches
    /// row-major; padding counts as class 0; ties go to the lower class.
    pub fn patch_classes(&self, prep: &PreprocessConfig, grid: usize) -> Result<Vec<u16>> {
        let (rw, rh) = match prep.resize {
            Resize::ShortestEdge(s) => resized_dimensions(self.width, self.height, s),
            Resize::Exact { width, height } => (width, height),
            Resize::Keep => (self.width, self.height),
        };
        let (cw, ch) = prep.crop.unwrap_or((rw, rh));
        ensure!(
            cw == ch && grid > 0 && (cw as usize).is_multiple_of(grid),
            "the model's input ({cw}×{ch}) is not a square of {grid}×{grid} whole patches"
        );
        let left = prep
            .crop
            .map_or(0, |_| crop_offset(rw, cw, prep.crop_rounding));
        let top = prep
            .crop
            .map_or(0, |_| crop_offset(rh, ch, prep.crop_rounding));
        let patch = cw as usize / grid;
        // Source pixel of resized coordinate r on an axis of `from` → `to` samples.
        let source = |r: i64, from: u32, to: u32| -> Option<usize> {
            (0..i64::from(to)).contains(&r).then(|| {
                let s = ((r as f64 + 0.5) * f64::from(from) / f64::from(to)).floor() as usize;
                s.min(from as usize - 1)
            })
        };
        let xs: Vec<Option<usize>> = (0..cw)
            .map(|x| source(i64::from(x) + left, self.width, rw))
            .collect();
        let mut out = Vec::with_capacity(grid * grid);
        let mut votes: Vec<(u16, u32)> = Vec::new();
        for py in 0..grid {
            for px in 0..grid {
                votes.clear();
                for y in py * patch..(py + 1) * patch {
                    let sy = source(y as i64 + top, self.height, rh);
                    for x in &xs[px * patch..(px + 1) * patch] {
                        let class = match (x, sy) {
                            (Some(x), Some(y)) => self.classes[y * self.width as usize + x],
                            _ => 0,
                        };
                        match votes.iter_mut().find(|(c, _)| *c == class) {
                            Some(v) => v.1 += 1,
                            None => votes.push((class, 1)),
                        }
                    }
                }
                let best = votes
                    .iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                    .map_or(0, |v| v.0);
                out.push(best);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_map_at_its_own_size_keeps_each_patch_majority() {
        // 4×4 map, 2×2 grid at 4 px: the top-left patch is class 3 by 3 votes to 1.
        #[rustfmt::skip]
        let m = ClassMap::new(4, 4, vec![
            3, 3, 0, 0,
            3, 1, 0, 2,
            0, 0, 5, 5,
            0, 0, 5, 5,
        ]).unwrap();
        let got = m.patch_classes(&PreprocessConfig::with_size(4), 2).unwrap();
        // Top-right: 0 three times, 2 once → 0; bottom-left all 0; bottom-right all 5.
        assert_eq!(got, vec![3, 0, 0, 5]);
    }

    #[test]
    fn resize_and_centre_crop_follow_the_image() {
        // 8 wide, 4 high: the left half class 1, the right half class 2. Resized to a
        // shortest side of 2 → 4×2, centre crop 2×2 keeps columns 1..3: one pixel of each.
        let classes = (0..4)
            .flat_map(|_| (0..8).map(|x| if x < 4 { 1 } else { 2 }))
            .collect();
        let m = ClassMap::new(8, 4, classes).unwrap();
        let got = m.patch_classes(&PreprocessConfig::with_size(2), 2).unwrap();
        assert_eq!(got, vec![1, 2, 1, 2]);
        // A tie goes to the lower class.
        let got = m.patch_classes(&PreprocessConfig::with_size(2), 1).unwrap();
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn bad_maps_and_grids_are_errors() {
        assert!(ClassMap::new(2, 2, vec![0; 3]).is_err());
        let m = ClassMap::new(4, 4, vec![0; 16]).unwrap();
        assert!(m.patch_classes(&PreprocessConfig::with_size(4), 3).is_err());
        assert!(m.patch_classes(&PreprocessConfig::with_size(4), 0).is_err());
    }
}
