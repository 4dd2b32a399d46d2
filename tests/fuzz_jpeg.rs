//! Seeded mutation run over the JPEG reader (src/clip/preprocess/jpeg.rs and its zune-jpeg
//! fallback), starting from the corpus in tests/fuzz/jpeg (PIL-made baseline and progressive,
//! 4:4:4 / 4:2:2 / 4:2:0, grey and CMYK, one with restart markers). Each mutant is a byte flip
//! run, a truncation, a splice of another seed, or a frame header with random dimensions.
//!
//! Every mutant must come back as an image or as an error naming its file, without a panic
//! (caught with catch_unwind and counted as a failure), within a time bound, and with peak
//! heap use (measured by a counting allocator) under 16 KiB per byte of the file + 1 MiB: the
//! decoder refuses a frame whose declared size the remaining data cannot hold before it
//! allocates anything of that size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use saeclip::clip::preprocess::load_rgb;
use saeclip::rng::SplitMix64;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new);
        if !q.is_null() {
            if new >= layout.size() {
                let live =
                    LIVE.fetch_add(new - layout.size(), Ordering::Relaxed) + (new - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/jpeg");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 11, "corpus has {} seeds", seeds.len());
    seeds
}

/// Position of the first SOF0/SOF1/SOF2 segment's height field.
fn sof_dims(data: &[u8]) -> Option<usize> {
    (2..data.len().saturating_sub(8))
        .find(|&i| data[i] == 0xFF && matches!(data[i + 1], 0xC0..=0xC2))
        .map(|i| i + 5)
}

fn mutate(
    rng: &mut SplitMix64,
    seeds: &[(String, Vec<u8>)],
    seed: &[u8],
) -> (&'static str, Vec<u8>) {
    let mut d = seed.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
                if rng.below(4) == 0 {
                    d[i] = rng.next_u64() as u8;
                }
            }
            ("flip", d)
        }
        1 => {
            d.truncate(rng.below(d.len()));
            // Often keep the EOI, so the decoder, not the EOI check, meets the short data.
            if rng.below(2) == 0 {
                d.extend_from_slice(&[0xFF, 0xD9]);
            }
            ("truncate", d)
        }
        2 => {
            let other = &seeds[rng.below(seeds.len())].1;
            let (a, b) = (rng.below(d.len()), rng.below(other.len()));
            let mut out = d[..a].to_vec();
            out.extend_from_slice(&other[b..]);
            ("splice", out)
        }
        _ => {
            if let Some(at) = sof_dims(&d) {
                let (h, w) = match rng.below(3) {
                    0 => (rng.next_u64() as u16, rng.next_u64() as u16),
                    1 => (8000 + rng.below(2000) as u16, 8000 + rng.below(2000) as u16),
                    _ => (1 + rng.below(64) as u16, 1 + rng.below(64) as u16),
                };
                d[at..at + 2].copy_from_slice(&h.to_be_bytes());
                d[at + 2..at + 4].copy_from_slice(&w.to_be_bytes());
            }
            ("sof-size", d)
        }
    }
}

#[test]
fn mutated_jpegs_decode_or_fail_cleanly_within_time_and_memory() {
    let seeds = corpus();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix64::new(27); // the seed fixes every mutation
    let started = Instant::now();
    let (mut decoded, mut refused, mut failures) = (0usize, 0usize, Vec::new());
    let mut worst_ratio = 0f64;
    for i in 0..1500 {
        let (name, seed) = &seeds[i % seeds.len()];
        let (how, bytes) = mutate(&mut rng, &seeds, seed);
        let path = dir.path().join(format!("m{i:04}_{how}_{name}"));
        std::fs::write(&path, &bytes).unwrap();
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| load_rgb(&path)));
        let took = t.elapsed();
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let bound = 16 * 1024 * bytes.len() + (1 << 20);
        worst_ratio = worst_ratio.max(peak as f64 / bytes.len().max(1) as f64);
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        match result {
            Err(_) => failures.push(format!("{file}: panicked")),
            Ok(Ok(_)) => decoded += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                if !msg.contains(&file) || msg.contains('\n') {
                    failures.push(format!(
                        "{file}: error does not name the file in one line: {msg}"
                    ));
                }
                refused += 1;
            }
        }
        if peak > bound {
            failures.push(format!(
                "{file}: peak heap {peak} B over the bound {bound} B"
            ));
        }
        if took > Duration::from_secs(2) {
            failures.push(format!("{file}: took {took:?}"));
        }
    }
    let total = started.elapsed();
    println!(
        "1500 mutants: {decoded} decoded, {refused} refused, worst peak heap {worst_ratio:.0} B per file byte, {total:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        refused > 100 && decoded > 100,
        "mutations too weak or too strong"
    );
    assert!(total < Duration::from_secs(60), "took {total:?}");
}

#[test]
fn a_header_declaring_a_huge_frame_over_little_data_is_refused_before_allocating() {
    let seeds = corpus();
    for (name, seed) in &seeds {
        let mut d = seed.clone();
        let at = sof_dims(&d).unwrap();
        d[at..at + 4].copy_from_slice(&[0x27, 0x10, 0x27, 0x10]); // 10000 x 10000
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &d).unwrap();
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let err = load_rgb(&path).expect_err(name).to_string();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        assert!(err.contains(name.as_str()), "{err}");
        assert!(
            peak < 1 << 20,
            "{name}: {peak} B allocated for a 10000x10000 header"
        );
    }
}
