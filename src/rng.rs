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
