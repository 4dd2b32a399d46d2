//! Datasets on fake releases built in temporary folders: lengths, order, labels, class
//! names, sources, pixels, and the errors for broken layouts; the procedural dataset's
//! determinism, balance and factors.

use std::collections::HashMap;
use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};
use saeclip::data::procedural::{Colour, Shape, Texture};
use saeclip::data::{
    limited, open, Dataset, DatasetKind, DatasetSpec, Procedural, ProceduralFactors, Split,
};

fn spec(kind: DatasetKind, path: &Path) -> DatasetSpec {
    DatasetSpec {
        kind,
        path: path.to_str().unwrap().to_string(),
    }
}

fn error_text(result: anyhow::Result<Box<dyn Dataset>>) -> String {
    match result {
        Ok(_) => panic!("opened a broken dataset"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------------------------------
// CIFAR

/// The pixel planes of fake record `global`: R, G, B values that identify the record, the
/// plane and the position.
fn fake_pixels(global: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(3072);
    for plane in 0..3 {
        for pos in 0..1024 {
            out.push(((global * 7 + plane * 50 + pos) % 256) as u8);
        }
    }
    out
}

/// A CIFAR-10 binary release with a few records per batch; labels = global index mod 10.
fn fake_cifar10(dir: &Path, counts: &[usize; 5], test: usize) {
    let root = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&root).unwrap();
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    std::fs::write(root.join("batches.meta.txt"), names).unwrap();
    let mut global = 0;
    for (b, &n) in counts.iter().enumerate() {
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.push((global % 10) as u8);
            bytes.extend(fake_pixels(global));
            global += 1;
        }
        std::fs::write(root.join(format!("data_batch_{}.bin", b + 1)), bytes).unwrap();
    }
    let mut bytes = Vec::new();
    for i in 0..test {
        bytes.push(9 - (i % 10) as u8);
        bytes.extend(fake_pixels(1000 + i));
    }
    std::fs::write(root.join("test_batch.bin"), bytes).unwrap();
}

#[test]
fn cifar10_order_labels_sources_and_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    fake_cifar10(tmp.path(), &[3, 2, 1, 2, 4], 5);
    // The folder holding the release and the release folder itself both work.
    for dir in [
        tmp.path().to_path_buf(),
        tmp.path().join("cifar-10-batches-bin"),
    ] {
        let train = open(&spec(DatasetKind::Cifar10, &dir), Split::Train).unwrap();
        assert_eq!(train.len(), 12);
        assert_eq!(train.split(), Split::Train);
        assert_eq!(train.classes().len(), 10);
        assert_eq!(train.classes()[0], "airplane");
        assert_eq!(train.classes()[9], "truck");
        let sources: Vec<String> = (0..12).map(|i| train.item(i).source).collect();
        assert_eq!(sources[0], "data_batch_1.bin:0");
        assert_eq!(sources[2], "data_batch_1.bin:2");
        assert_eq!(sources[3], "data_batch_2.bin:0");
        assert_eq!(sources[5], "data_batch_3.bin:0");
        assert_eq!(sources[6], "data_batch_4.bin:0");
        assert_eq!(sources[11], "data_batch_5.bin:3");
        for i in 0..12 {
            let item = train.item(i);
            assert_eq!(item.index, i);
            assert_eq!(item.label, (i % 10) as i64);
            let img = train.image(i).unwrap();
            assert_eq!(img.dimensions(), (32, 32));
            let planes = fake_pixels(i);
            for (x, y) in [(0, 0), (5, 0), (0, 7), (31, 31), (13, 22)] {
                let pos = (y * 32 + x) as usize;
                assert_eq!(
                    img.get_pixel(x, y).0,
                    [planes[pos], planes[1024 + pos], planes[2048 + pos]],
                    "record {i} at ({x}, {y})"
                );
            }
        }
        let test = open(&spec(DatasetKind::Cifar10, &dir), Split::Test).unwrap();
        assert_eq!(test.len(), 5);
        assert_eq!(test.item(4).source, "test_batch.bin:4");
        assert_eq!(test.item(1).label, 8);
        assert_eq!(
            test.image(2).unwrap().get_pixel(1, 0).0[0],
            fake_pixels(1002)[1]
        );
    }
}

#[test]
fn cifar10_truncated_and_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    fake_cifar10(tmp.path(), &[1, 1, 1, 1, 1], 2);
    let root = tmp.path().join("cifar-10-batches-bin");
    let s = spec(DatasetKind::Cifar10, tmp.path());

    // A truncated test batch breaks only the test split.
    let bytes = std::fs::read(root.join("test_batch.bin")).unwrap();
    std::fs::write(root.join("test_batch.bin"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(open(&s, Split::Train).is_ok());
    let err = error_text(open(&s, Split::Test));
    assert!(
        err.contains("test_batch.bin") && err.contains("truncated"),
        "{err}"
    );

    std::fs::remove_file(root.join("data_batch_4.bin")).unwrap();
    let err = error_text(open(&s, Split::Train));
    assert!(err.contains("data_batch_4.bin"), "{err}");
    assert!(err.contains("saeclip fetch dataset cifar10 --out"), "{err}");

    std::fs::remove_file(root.join("batches.meta.txt")).unwrap();
    let err = error_text(open(&s, Split::Train));
    assert!(err.contains("batches.meta.txt"), "{err}");
    assert!(err.contains("cifar-10-batches-bin"), "{err}");

    let err = error_text(open(
        &spec(DatasetKind::Cifar10, &tmp.path().join("nowhere")),
        Split::Train,
    ));
    assert!(
        err.contains("nowhere") && err.contains("saeclip fetch dataset"),
        "{err}"
    );
}

#[test]
fn cifar100_uses_fine_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar-100-binary");
    std::fs::create_dir_all(&root).unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("fine_{i:02}")).collect();
    std::fs::write(root.join("fine_label_names.txt"), names.join("\n") + "\n").unwrap();
    std::fs::write(root.join("coarse_label_names.txt"), "c\n").unwrap();
    let record = |coarse: u8, fine: u8, global: usize| {
        let mut r = vec![coarse, fine];
        r.extend(fake_pixels(global));
        r
    };
    let train: Vec<u8> = (0..4)
        .flat_map(|i| record(19 - i as u8, 97 - 3 * i as u8, i))
        .collect();
    std::fs::write(root.join("train.bin"), train).unwrap();
    std::fs::write(root.join("test.bin"), record(3, 42, 9)).unwrap();

    let s = spec(DatasetKind::Cifar100, tmp.path());
    let data = open(&s, Split::Train).unwrap();
    assert_eq!(data.len(), 4);
    assert_eq!(data.classes().len(), 100);
    assert_eq!(data.classes()[97], "fine_97");
    let labels: Vec<i64> = (0..4).map(|i| data.item(i).label).collect();
    assert_eq!(labels, [97, 94, 91, 88]);
    assert_eq!(data.item(3).source, "train.bin:3");
    assert_eq!(
        data.image(2).unwrap().get_pixel(3, 1).0,
        [
            fake_pixels(2)[35],
            fake_pixels(2)[1024 + 35],
            fake_pixels(2)[2048 + 35]
        ]
    );
    let test = open(&spec(DatasetKind::Cifar100, &root), Split::Test).unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test.item(0).label, 42);

    // A CIFAR-10 folder is not a CIFAR-100 release.
    let err = error_text(open(
        &spec(DatasetKind::Cifar100, &tmp.path().join("x")),
        Split::Test,
    ));
    assert!(
        err.contains("cifar-100-binary") && err.contains("cifar100"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Food-101

fn write_image(path: &Path, colour: [u8; 3], format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(24, 16, |x, y| {
        if (x / 4 + y / 4) % 2 == 0 {
            Rgb(colour)
        } else {
            Rgb([colour[0] / 2, colour[1] / 2, colour[2] / 2])
        }
    });
    img.save_with_format(path, format).unwrap();
}

#[test]
fn food101_follows_the_meta_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("food-101");
    let classes = ["apple_pie", "baby_back_ribs", "baklava"];
    std::fs::create_dir_all(root.join("meta")).unwrap();
    std::fs::write(root.join("meta/classes.txt"), classes.join("\n") + "\n").unwrap();
    let train = [
        "baklava/20",
        "apple_pie/1005649",
        "baklava/3",
        "baby_back_ribs/7",
    ];
    std::fs::write(root.join("meta/train.txt"), train.join("\n") + "\n").unwrap();
    std::fs::write(root.join("meta/test.txt"), "apple_pie/11\nbaklava/12\n").unwrap();
    for id in train.iter().chain(&["apple_pie/11"]) {
        write_image(
            &root.join(format!("images/{id}.jpg")),
            [200, 60, 30],
            ImageFormat::Jpeg,
        );
    }
    // baklava/12 is listed in test.txt but missing.

    for dir in [tmp.path(), root.as_path()] {
        let data = open(&spec(DatasetKind::Food101, dir), Split::Train).unwrap();
        assert_eq!(data.len(), 4);
        assert_eq!(data.classes(), classes);
        let items: Vec<(String, i64)> = (0..4)
            .map(|i| {
                let it = data.item(i);
                (it.source, it.label)
            })
            .collect();
        assert_eq!(
            items,
            [
                ("baklava/20.jpg".to_string(), 2),
                ("apple_pie/1005649.jpg".to_string(), 0),
                ("baklava/3.jpg".to_string(), 2),
                ("baby_back_ribs/7.jpg".to_string(), 1),
            ]
        );
        // Decoding is the project's PIL-equivalent decoder.
        let expected =
            saeclip::clip::preprocess::load_rgb(&root.join("images/baklava/3.jpg")).unwrap();
        assert_eq!(data.image(2).unwrap(), expected);
        assert_eq!(expected.dimensions(), (24, 16));
    }

    let test = open(&spec(DatasetKind::Food101, tmp.path()), Split::Test).unwrap();
    assert_eq!(test.len(), 2);
    assert!(test.image(0).is_ok());
    let err = test.image(1).unwrap_err().to_string();
    assert!(err.contains("baklava/12.jpg"), "{err}");

    // Missing meta files are named, with the layout and the fetch command.
    std::fs::remove_file(root.join("meta/test.txt")).unwrap();
    assert!(open(&spec(DatasetKind::Food101, tmp.path()), Split::Train).is_ok());
    let err = error_text(open(&spec(DatasetKind::Food101, tmp.path()), Split::Test));
    assert!(err.contains("meta/test.txt"), "{err}");
    assert!(err.contains("images/<class>/<id>.jpg"), "{err}");
    assert!(err.contains("saeclip fetch dataset food101 --out"), "{err}");
    std::fs::remove_file(root.join("meta/classes.txt")).unwrap();
    let err = error_text(open(&spec(DatasetKind::Food101, tmp.path()), Split::Train));
    assert!(err.contains("meta/classes.txt"), "{err}");

    // An unknown class in a list is an error naming the line.
    std::fs::write(root.join("meta/classes.txt"), "apple_pie\n").unwrap();
    let err = error_text(open(&spec(DatasetKind::Food101, tmp.path()), Split::Train));
    assert!(
        err.contains("train.txt line 1") && err.contains("baklava"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Image folder

#[test]
fn folder_order_labels_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_image(&dir.join("zebra/b.png"), [10, 20, 30], ImageFormat::Png);
    write_image(&dir.join("zebra/a.jpg"), [200, 200, 200], ImageFormat::Jpeg);
    write_image(&dir.join("ant/2.png"), [0, 255, 0], ImageFormat::Png);
    write_image(&dir.join("ant/1.png"), [255, 0, 0], ImageFormat::Png);
    write_image(&dir.join("ant/sub/0.png"), [0, 0, 255], ImageFormat::Png);
    std::fs::write(dir.join("ant/10.txt"), "not an image").unwrap();
    write_image(&dir.join("ant/.hidden.png"), [1, 1, 1], ImageFormat::Png);
    write_image(&dir.join(".git/x.png"), [1, 1, 1], ImageFormat::Png);
    std::fs::write(dir.join("README.md"), "files at the top are not a class").unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();

    for split in [Split::Train, Split::Test] {
        let data = open(&spec(DatasetKind::Folder, dir), split).unwrap();
        assert_eq!(data.classes(), ["ant", "empty", "zebra"]);
        let items: Vec<(String, i64)> = (0..data.len())
            .map(|i| {
                let it = data.item(i);
                (it.source, it.label)
            })
            .collect();
        let expected = [
            ("ant/1.png", 0),
            ("ant/10.txt", 0),
            ("ant/2.png", 0),
            ("ant/sub/0.png", 0),
            ("zebra/a.jpg", 2),
            ("zebra/b.png", 2),
        ];
        assert_eq!(
            items,
            expected.map(|(s, l)| (s.to_string(), l)).to_vec(),
            "{split}"
        );
        // The text file is an error at its own index; its neighbours load.
        let err = data.image(1).unwrap_err().to_string();
        assert!(
            err.contains("10.txt") && err.contains("not an image"),
            "{err}"
        );
        assert_eq!(data.image(0).unwrap().get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(data.image(2).unwrap().get_pixel(0, 0).0, [0, 255, 0]);
        assert_eq!(data.image(3).unwrap().get_pixel(0, 0).0, [0, 0, 255]);
        assert_eq!(data.image(5).unwrap().get_pixel(0, 0).0, [10, 20, 30]);
        // --limit keeps a prefix.
        let first = limited(data, Some(2));
        assert_eq!(first.len(), 2);
        assert_eq!(first.item(1).source, "ant/10.txt");
        assert_eq!(first.classes().len(), 3);
    }
}

#[test]
fn folder_split_subfolders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_image(&dir.join("train/cat/1.png"), [1, 2, 3], ImageFormat::Png);
    write_image(&dir.join("train/dog/1.png"), [4, 5, 6], ImageFormat::Png);
    write_image(&dir.join("train/dog/2.png"), [4, 5, 6], ImageFormat::Png);

    // Only train/: the whole folder is the dataset, and `train` is a class.
    let data = open(&spec(DatasetKind::Folder, dir), Split::Test).unwrap();
    assert_eq!(data.classes(), ["train"]);
    assert_eq!(data.len(), 3);
    assert_eq!(data.item(0).source, "train/cat/1.png");

    // train/ and test/: --split picks one; classes are the union of both.
    write_image(&dir.join("test/dog/9.png"), [7, 8, 9], ImageFormat::Png);
    write_image(&dir.join("test/emu/1.png"), [7, 8, 9], ImageFormat::Png);
    let train = open(&spec(DatasetKind::Folder, dir), Split::Train).unwrap();
    let test = open(&spec(DatasetKind::Folder, dir), Split::Test).unwrap();
    for d in [&train, &test] {
        assert_eq!(d.classes(), ["cat", "dog", "emu"]);
    }
    assert_eq!(train.len(), 3);
    assert_eq!(
        (0..3).map(|i| train.item(i).label).collect::<Vec<_>>(),
        [0, 1, 1]
    );
    assert_eq!(test.len(), 2);
    assert_eq!(test.item(0).source, "dog/9.png");
    assert_eq!(test.item(0).label, 1);
    assert_eq!(test.item(1).label, 2);
    assert_eq!(test.image(1).unwrap().get_pixel(0, 0).0, [7, 8, 9]);

    let err = error_text(open(
        &spec(DatasetKind::Folder, &dir.join("none")),
        Split::Train,
    ));
    assert!(
        err.contains("none") && err.contains("one subfolder per class"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = error_text(open(&spec(DatasetKind::Folder, empty.path()), Split::Train));
    assert!(err.contains("no class subfolders"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Procedural

fn procedural(seed: u64, split: Split) -> Box<dyn Dataset> {
    open(&format!("procedural:{seed}").parse().unwrap(), split).unwrap()
}

#[test]
fn procedural_is_deterministic() {
    let a = procedural(7, Split::Train);
    let b = procedural(7, Split::Train);
    let other_seed = procedural(8, Split::Train);
    let test = procedural(7, Split::Test);
    for i in [0, 1, 47, 48, 1000, 4799] {
        let img = a.image(i).unwrap();
        assert_eq!(img.as_raw(), b.image(i).unwrap().as_raw(), "index {i}");
        assert_eq!(a.item(i), b.item(i));
        assert_ne!(img.as_raw(), other_seed.image(i).unwrap().as_raw());
        assert_ne!(a.item(i).source, other_seed.item(i).source);
        assert_eq!(a.item(i).label, other_seed.item(i).label);
    }
    for i in [0, 5, 959] {
        assert_ne!(a.item(i).source, test.item(i).source);
    }
    // A fixed fingerprint: the same bytes on every machine and in every later build.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for i in [0, 1, 2, 3, 4, 5] {
        for &byte in a.image(i).unwrap().as_raw() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    println!("procedural:7 train 0..6 FNV-1a = {hash:#018x}");
    assert_eq!(hash, PROCEDURAL_FINGERPRINT);
}

/// FNV-1a of the bytes of `procedural:7` train images 0..6 (see the test above).
const PROCEDURAL_FINGERPRINT: u64 = 0x37de_e375_7c32_f2a9;

#[test]
fn procedural_is_balanced_with_48_classes() {
    let train = procedural(0, Split::Train);
    let test = procedural(0, Split::Test);
    assert_eq!(train.len(), 4800);
    assert_eq!(test.len(), 960);
    assert_eq!(train.classes().len(), 48);
    assert_eq!(train.classes()[0], "red circle");
    assert_eq!(train.classes()[7], "green square");
    assert_eq!(train.classes()[47], "black cross");
    for (data, per_class) in [(&train, 100), (&test, 20)] {
        let mut counts = HashMap::new();
        for i in 0..data.len() {
            *counts.entry(data.item(i).label).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 48);
        assert!(counts.values().all(|&c| c == per_class), "{counts:?}");
    }
    // Every prefix of 48 is one of each class; textures are balanced per class.
    let p = Procedural::new(0, Split::Train);
    let mut textures = HashMap::new();
    for i in 0..4800 {
        let f = p.factors(i);
        assert_eq!(f.label(), i % 48);
        assert_eq!(train.classes()[f.label()], f.class_name());
        *textures.entry((f.label(), f.texture)).or_insert(0) += 1;
    }
    assert_eq!(textures.len(), 48 * 4);
    assert!(textures.values().all(|&c| c == 25));
    let first = limited(train, Some(96));
    assert_eq!(first.len(), 96);
    assert_eq!(first.spec().to_string(), "procedural:0");
}

#[test]
fn procedural_factors_round_trip() {
    let p = Procedural::new(7, Split::Train);
    let mut backgrounds = HashMap::new();
    let mut sides = HashMap::new();
    for i in 0..p.len() {
        let f = p.factors(i);
        let source = p.item(i).source;
        assert!(
            source.starts_with(&format!("procedural:7/train/{i:06}?shape=")),
            "{source}"
        );
        assert_eq!(ProceduralFactors::from_source(&source).unwrap(), f);
        *backgrounds.entry(f.background).or_insert(0) += 1;
        *sides.entry(f.side).or_insert(0) += 1;
    }
    assert_eq!(backgrounds.len(), 6);
    assert_eq!(sides.len(), 5);
    let item = p.item(48 + 3);
    assert!(
        item.source
            .contains("?shape=star&colour=red&texture=striped&"),
        "{}",
        item.source
    );
    let img = p.image(123).unwrap();
    assert_eq!(img.width(), p.factors(123).side);
    assert_eq!(img.height(), img.width());

    for bad in [
        "procedural:7/train/000001?shape=blob&colour=red",
        "shape=circle&colour=red&texture=solid&background=sky&side=224&x=1&y=2&radius=3",
        "shape=circle&colour=red&texture=solid&background=sky&side=224&x=1&y=2&radius=3&rotation=4&z=1",
        "shape=circle&colour=red&texture=solid&background=sky&side=big&x=1&y=2&radius=3&rotation=4",
    ] {
        assert!(ProceduralFactors::from_source(bad).is_err(), "{bad}");
    }
}

#[test]
fn procedural_red_shapes_are_red() {
    let p = Procedural::new(11, Split::Test);
    let red = Colour::Red.position() * Shape::ALL.len();
    let mut checked = 0;
    for i in 0..p.len() {
        let f = p.factors(i);
        if f.colour != Colour::Red {
            continue;
        }
        assert!((red..red + 6).contains(&f.label()));
        let img = p.image(i).unwrap();
        let mask = p.mask(i);
        let (mut inside, mut reddish) = (0, 0);
        for (px, m) in img.pixels().zip(mask.pixels()) {
            if m[0] == 255 {
                inside += 1;
                let [r, g, b] = px.0.map(i32::from);
                if r > 120 && r > 3 * g && r > 3 * b {
                    reddish += 1;
                }
            }
        }
        assert!(inside > 1000, "{f:?}");
        assert_eq!(
            reddish, inside,
            "{f:?}: {reddish}/{inside} red pixels in the shape"
        );
        // The shape is most of what is red: the background is not.
        let red_total = img
            .pixels()
            .filter(|p| {
                let [r, g, b] = p.0.map(i32::from);
                r > 120 && r > 3 * g && r > 3 * b
            })
            .count();
        assert!(red_total <= inside + 2 * f.side as usize * 4, "{f:?}");
        checked += 1;
        if f.texture == Texture::Solid {
            // Solid shapes are close to the nominal colour.
            let x = f.x;
            let y = f.y;
            if f.shape != Shape::Ring {
                let [r, g, b] = img.get_pixel(x, y).0;
                assert!(r >= 200 && g <= 50 && b <= 50, "{f:?}: {r} {g} {b}");
            }
        }
    }
    assert_eq!(checked, 120);
}

#[test]
fn procedural_images_are_fast() {
    let p = Procedural::new(1, Split::Train);
    // Best of three rounds, so that a busy machine does not fail the test.
    let ms = (0..3)
        .map(|round| {
            let start = std::time::Instant::now();
            for i in 0..100 {
                assert!(p.image(round * 100 + i).unwrap().width() >= 160);
            }
            start.elapsed().as_secs_f64() * 1e3 / 100.0
        })
        .fold(f64::INFINITY, f64::min);
    println!("procedural: {ms:.3} ms per image");
    let budget = if cfg!(debug_assertions) { 100.0 } else { 5.0 };
    assert!(ms < budget, "{ms} ms per image");
}

// ---------------------------------------------------------------------------------------
// Names

#[test]
fn dataset_spec_parsing() {
    let s: DatasetSpec = "cifar10:data/cifar".parse().unwrap();
    assert_eq!(s.kind, DatasetKind::Cifar10);
    assert_eq!(s.path, "data/cifar");
    assert_eq!(s.to_string(), "cifar10:data/cifar");
    let s: DatasetSpec = "folder:/a/b:c".parse().unwrap();
    assert_eq!((s.kind, s.path.as_str()), (DatasetKind::Folder, "/a/b:c"));
    let s: DatasetSpec = "procedural:42".parse().unwrap();
    assert_eq!(s.seed().unwrap(), 42);
    assert_eq!(
        "FOOD101:x".parse::<DatasetSpec>().unwrap().to_string(),
        "food101:x"
    );
    assert_eq!(
        "cifar100:x".parse::<DatasetSpec>().unwrap().kind,
        DatasetKind::Cifar100
    );
    assert_eq!(
        "ImageNet:/data/in1k"
            .parse::<DatasetSpec>()
            .unwrap()
            .to_string(),
        "imagenet:/data/in1k"
    );

    for (bad, says) in [
        ("cifar10", "KIND:PATH"),
        ("", "KIND:PATH"),
        ("imagenet21k:/data", "unknown kind `imagenet21k`"),
        ("cifar10:", "empty"),
        ("procedural:seven", "seed"),
        ("procedural:-1", "seed"),
    ] {
        let err = bad.parse::<DatasetSpec>().unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
        if !bad.starts_with("procedural") && says != "empty" {
            assert!(
                err.contains("cifar10, cifar100, food101, folder, imagenet, procedural"),
                "{err}"
            );
        }
    }
}
