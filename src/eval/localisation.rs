//! The localisation probe of a patch-token SAE: does a latent fire on the patches where an
//! object is? For a dataset with per-pixel ground truth (procedural shapes' exact masks,
//! ADE20K's annotations; [`crate::data::ClassMap`]) every patch gets the class of most of
//! its pixels, and each latent's per-patch activation is scored as a detector of those
//! patches by AUROC over all patches of the sample (the vision-SAE segmentation probe,
//! with the best single latent in place of a trained linear head):
//!
//! - `foreground`: patches of any class but 0 (background / unlabelled) against the rest;
//! - per class: that class's patches against every other patch, and the mean over classes.
//!
//! A latent that fires exactly on the object's patches scores 1.0; one that ignores them
//! 0.5. Like `factors`, the best latent is chosen on the same patches it is scored on, so
//! compare against the random-decoder baseline, which has the same advantage.

use serde_json::{json, Value};

use super::auroc::{class_statistics, SparseScores};
use crate::sae::Codes;

/// Per-patch sparse activations and classes of one SAE.
#[derive(Debug, Clone, Default)]
pub struct PatchScores {
    pub store: SparseScores,
    /// Class-map class of each stored patch.
    pub classes: Vec<i64>,
    /// Images whose patches are stored.
    pub images: usize,
    /// Images left out: over the entry cap, or without a class map.
    pub dropped: usize,
}

impl PatchScores {
    pub fn new() -> PatchScores {
        PatchScores {
            store: SparseScores::new(),
            ..PatchScores::default()
        }
    }

    /// Add one image: `patches[p]` is patch p's (latent, value) entries and `classes[p]`
    /// its class. Nothing is added past `max_entries` entries (the image counts as dropped).
    pub fn push_image(
        &mut self,
        patches: Vec<Vec<(u32, f32)>>,
        classes: &[u16],
        max_entries: usize,
    ) {
        assert_eq!(patches.len(), classes.len(), "one class per patch");
        let entries: usize = patches.iter().map(Vec::len).sum();
        if self.dropped > 0 || self.store.entries() + entries > max_entries {
            self.dropped += 1;
            return;
        }
        for (p, &c) in patches.into_iter().zip(classes) {
            self.store.push(p);
            self.classes.push(i64::from(c));
        }
        self.images += 1;
    }

    /// Add the patches of a batch from its codes: rows are image-major, `per` rows an
    /// image, and row `offset + p` of an image is its patch p (`patch_classes[i]` the
    /// classes of image i's patches, None to leave it out).
    pub fn push_codes(
        &mut self,
        codes: &Codes,
        per: usize,
        offset: usize,
        patch_classes: &[Option<Vec<u16>>],
        max_entries: usize,
    ) -> anyhow::Result<()> {
        let rows = Vec::<i64>::try_from(codes.rows.to_device(tch::Device::Cpu))?;
        let latents = Vec::<i64>::try_from(codes.latents.to_device(tch::Device::Cpu))?;
        let values = Vec::<f32>::try_from(
            codes
                .values
                .to_device(tch::Device::Cpu)
                .to_kind(tch::Kind::Float),
        )?;
        let mut by_row: Vec<Vec<(u32, f32)>> = vec![Vec::new(); per * patch_classes.len()];
        for ((r, l), v) in rows.into_iter().zip(latents).zip(values) {
            if let Some(slot) = by_row.get_mut(r as usize) {
                slot.push((l as u32, v));
            }
        }
        let mut rows = by_row.into_iter();
        for classes in patch_classes {
            let image: Vec<Vec<(u32, f32)>> = rows.by_ref().take(per).collect();
            match classes {
                Some(c) if offset + c.len() <= image.len() => {
                    let patches = image.into_iter().skip(offset).take(c.len()).collect();
                    self.push_image(patches, c, max_entries);
                }
                _ => self.dropped += 1,
            }
        }
        Ok(())
    }
}

/// The `localisation` section (see the module docs); `names[c]` names class c (0 the
/// background). Null with the reason when no patch has a class or none is background.
pub fn section(p: &PatchScores, names: &[String], d_sae: usize) -> (Value, Option<String>) {
    let n = p.classes.len();
    if n == 0 {
        return (
            Value::Null,
            Some("no image of the sample had a class map".into()),
        );
    }
    if let Some(&c) = p
        .classes
        .iter()
        .find(|&&c| c < 0 || c as usize >= names.len())
    {
        return (
            Value::Null,
            Some(format!(
                "a class map holds class {c}, outside the dataset's {} classes",
                names.len()
            )),
        );
    }
    let foreground: Vec<i64> = p.classes.iter().map(|&c| i64::from(c > 0)).collect();
    let fg = class_statistics(&p.store, &foreground, 2, d_sae, 0);
    let Some(best) = fg.best[1] else {
        return (
            Value::Null,
            Some("the patches are all background or all foreground, or no latent fired".into()),
        );
    };
    let per_class = class_statistics(&p.store, &p.classes, names.len(), d_sae, 0);
    let classes: Vec<Value> = (1..names.len())
        .filter_map(|c| {
            per_class.best[c].map(|b| {
                json!({"class": names[c], "patches": per_class.count[c], "best_latent": b.latent, "auroc": b.auroc})
            })
        })
        .collect();
    let aurocs: Vec<f64> = (1..names.len())
        .filter_map(|c| per_class.best[c].map(|b| b.auroc))
        .collect();
    let mean = (!aurocs.is_empty()).then(|| aurocs.iter().sum::<f64>() / aurocs.len() as f64);
    (
        json!({
            "images": p.images,
            "patches": n,
            "foreground_patches": fg.count[1],
            "foreground": {"best_latent": best.latent, "auroc": best.auroc, "f1": best.f1},
            "classes": classes,
            "mean_auroc": mean,
        }),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn names() -> Vec<String> {
        ["background", "circle", "star"].map(String::from).to_vec()
    }

    /// 200 images of 16 patches; patch p of image i is background, circle or star.
    fn classes_of(i: usize) -> Vec<u16> {
        (0..16)
            .map(|p| match (i + p) % 5 {
                0 | 1 => 1 + (i % 2) as u16,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn a_planted_latent_localises_perfectly_and_a_random_one_at_chance() {
        let mut rng = SplitMix64::new(7);
        let mut uniform = move || ((rng.next_u64() >> 40) as f32) / (1u64 << 24) as f32;
        let mut planted = PatchScores::new();
        let mut random = PatchScores::new();
        for i in 0..200 {
            let classes = classes_of(i);
            // Latent 3 fires on every object patch (more on stars), latent 0 anywhere.
            let with_planted = classes
                .iter()
                .map(|&c| {
                    let mut e = vec![(0, uniform() + 0.01)];
                    if c > 0 {
                        e.push((3, c as f32));
                    }
                    e
                })
                .collect();
            planted.push_image(with_planted, &classes, usize::MAX);
            let noise = classes
                .iter()
                .map(|_| vec![(0, uniform() + 0.01)])
                .collect();
            random.push_image(noise, &classes, usize::MAX);
        }
        let (v, reason) = section(&planted, &names(), 4);
        assert!(reason.is_none());
        assert_eq!(v["patches"], 3200);
        assert_eq!(v["foreground"]["best_latent"], 3);
        assert_eq!(v["foreground"]["auroc"].as_f64().unwrap(), 1.0);
        assert_eq!(v["foreground"]["f1"].as_f64().unwrap(), 1.0);
        // Per class: latent 3 ranks stars (value 2) above circles (1) above the rest, so
        // it detects stars perfectly and circles above chance.
        let classes = v["classes"].as_array().unwrap();
        assert_eq!(classes[1]["class"], "star");
        assert_eq!(classes[1]["auroc"].as_f64().unwrap(), 1.0);
        let (v, _) = section(&random, &names(), 4);
        let auroc = v["foreground"]["auroc"].as_f64().unwrap();
        assert!((auroc - 0.5).abs() < 0.03, "random latent AUROC {auroc}");
        assert_eq!(v["foreground"]["best_latent"], 0);
    }

    #[test]
    fn no_patches_or_bad_classes_give_a_reason() {
        let (v, reason) = section(&PatchScores::new(), &names(), 4);
        assert!(v.is_null() && reason.unwrap().contains("class map"));
        let mut p = PatchScores::new();
        p.push_image(vec![vec![(0, 1.0)]], &[9], usize::MAX);
        let (v, reason) = section(&p, &names(), 4);
        assert!(v.is_null() && reason.unwrap().contains("class 9"));
        // Over the entry cap, nothing is stored.
        let mut p = PatchScores::new();
        p.push_image(vec![vec![(0, 1.0)], vec![(1, 1.0)]], &[0, 1], 1);
        assert_eq!((p.images, p.dropped, p.classes.len()), (0, 1, 0));
    }
}
