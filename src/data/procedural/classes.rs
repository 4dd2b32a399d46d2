//! The class sets of `procedural:SEED[/CLASSES]`: the same images labelled by shape (6),
//! colour × shape (48, the default) or texture × colour × shape (192).

use super::{Colour, ProceduralFactors, Shape, Texture};

/// Which factors name the class of a procedural image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProceduralClasses {
    /// The 6 shapes.
    Shape,
    /// The 48 colour × shape pairs (`procedural:SEED`).
    #[default]
    ColourShape,
    /// The 192 texture × colour × shape triples.
    ColourShapeTexture,
}

impl ProceduralClasses {
    /// The name after `procedural:SEED/`.
    pub fn name(self) -> &'static str {
        match self {
            ProceduralClasses::Shape => "shape",
            ProceduralClasses::ColourShape => "colour-shape",
            ProceduralClasses::ColourShapeTexture => "colour-shape-texture",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            ProceduralClasses::Shape,
            ProceduralClasses::ColourShape,
            ProceduralClasses::ColourShapeTexture,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }

    /// The class names, in label order.
    pub(super) fn names(self) -> Vec<String> {
        let pairs = || {
            Colour::ALL
                .iter()
                .flat_map(|c| Shape::ALL.iter().map(move |s| format!("{c} {s}")))
        };
        match self {
            ProceduralClasses::Shape => Shape::ALL.iter().map(|s| s.to_string()).collect(),
            ProceduralClasses::ColourShape => pairs().collect(),
            ProceduralClasses::ColourShapeTexture => Texture::ALL
                .iter()
                .flat_map(|t| pairs().map(move |p| format!("{t} {p}")))
                .collect(),
        }
    }

    /// The label of an image with these factors.
    pub(super) fn label(self, f: &ProceduralFactors) -> usize {
        match self {
            ProceduralClasses::Shape => f.shape.position(),
            ProceduralClasses::ColourShape => f.label(),
            ProceduralClasses::ColourShapeTexture => {
                f.texture.position() * Colour::ALL.len() * Shape::ALL.len() + f.label()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::procedural::Procedural;
    use crate::data::{Dataset, DatasetSpec, Split};

    #[test]
    fn class_sets_label_the_same_images() {
        let pairs = Procedural::new(3, Split::Test);
        let shapes = Procedural::with_classes(3, ProceduralClasses::Shape, Split::Test);
        let triples =
            Procedural::with_classes(3, ProceduralClasses::ColourShapeTexture, Split::Test);
        assert_eq!(shapes.classes().len(), 6);
        assert_eq!(triples.classes().len(), 192);
        let mut seen = std::collections::HashSet::new();
        for i in 0..pairs.len() {
            let f = pairs.factors(i);
            assert_eq!(shapes.factors(i), f);
            assert_eq!(triples.factors(i), f);
            let (s, t) = (shapes.item(i), triples.item(i));
            assert_eq!(s.source, pairs.item(i).source);
            assert_eq!(shapes.classes()[s.label as usize], f.shape.name());
            assert_eq!(
                triples.classes()[t.label as usize],
                format!("{} {}", f.texture, f.class_name())
            );
            seen.insert(t.label);
        }
        assert_eq!(seen.len(), 192, "every triple occurs in the test split");
    }

    #[test]
    fn class_set_specs() {
        let spec: DatasetSpec = "procedural:0/shape".parse().unwrap();
        assert_eq!(spec.seed().unwrap(), 0);
        assert_eq!(spec.procedural_classes().unwrap(), ProceduralClasses::Shape);
        let plain: DatasetSpec = "procedural:7".parse().unwrap();
        assert_eq!(
            plain.procedural_classes().unwrap(),
            ProceduralClasses::ColourShape
        );
        let err = "procedural:0/sizes".parse::<DatasetSpec>().unwrap_err();
        assert!(err.to_string().contains("shape, colour-shape"), "{err}");
        let d = crate::data::open(&spec, Split::Test).unwrap();
        assert_eq!(d.spec().to_string(), "procedural:0/shape");
    }
}
