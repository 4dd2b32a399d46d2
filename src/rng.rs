//! Seeded draws from tch's random generator.
//!
//! libtorch has one default generator per process. `tch::manual_seed` followed by draws is
//! deterministic only when no other thread seeds or draws in between, so every seeded
//! section in saeclip (and in its tests) runs through [`seeded`], which holds one
//! process-wide lock for the seed and the draws that follow it. The lock is re-entrant on
//! the thread that holds it: a seeded section may call library code that seeds again.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};

static GENERATOR: Mutex<()> = Mutex::new(());

thread_local! {
    /// How many `seeded` sections this thread is inside.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Seeds tch's generator with `seed` and runs `f` while no other thread can seed or draw
/// through this function. Same seed, same draws in `f`: same bits.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    let _lock = (DEPTH.with(Cell::get) == 0)
        .then(|| GENERATOR.lock().unwrap_or_else(PoisonError::into_inner));
    DEPTH.with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    tch::manual_seed(seed);
    f()
}

/// Steele et al.'s SplitMix64: a small seeded generator for draws that must not touch
/// libtorch's process-wide generator (the stream's reader thread, sample shuffles, tests).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n ≥ 1; multiply-shift, bias below 2⁻³² for n < 2³²).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Exactly uniform in 0..n (n ≥ 1), by rejection.
    pub fn below_exact(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher–Yates, with [`SplitMix64::below_exact`].
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below_exact(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seeded;
    use tch::{Device, Kind, Tensor};

    fn draw() -> Tensor {
        Tensor::randn([256], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn same_seed_same_bits_while_other_threads_draw() {
        let want = seeded(9, draw);
        let noise: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _ = seeded(i, draw);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            assert!(seeded(9, draw).equal(&want));
        }
        for t in noise {
            t.join().unwrap();
        }
    }

    #[test]
    fn nested_sections_reseed_without_deadlock() {
        let (outer, inner) = seeded(1, || (draw(), seeded(2, draw)));
        assert!(outer.equal(&seeded(1, draw)));
        assert!(inner.equal(&seeded(2, draw)));
        assert!(!outer.equal(&inner));
    }

    #[test]
    fn a_panic_inside_leaves_the_lock_usable() {
        let r = std::panic::catch_unwind(|| seeded(3, || panic!("boom")));
        assert!(r.is_err());
        assert!(seeded(3, draw).equal(&seeded(3, draw)));
    }
}
