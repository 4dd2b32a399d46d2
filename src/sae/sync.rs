//! Host reads in the training step, and the choice between the step's two forms.
//!
//! On CUDA, every read of a device value by the host (`int64_value`, `Vec::try_from`) and
//! every op whose output *shape* depends on the data (`nonzero`, `masked_select`, and
//! `bincount`, which reads its input's maximum) waits until the device has finished all the
//! work queued before it: the host stops feeding kernels, and the device idles while the
//! host catches up. The training step therefore has two forms:
//!
//! - the **sync-free** form (CUDA), whose shapes never depend on the data, so the host only
//!   reads values at log intervals (the step line) and at the end of an epoch:
//!   AuxK takes the per-row top k_aux of `where(dead, pre, −∞)` over all latents and keeps
//!   the entries that fall on live latents with value 0 (they add nothing to any sum);
//!   offsets into sorted ids come from `searchsorted` of 0..=n; `Codes::fired` adds the
//!   `values > 0` flags into a zero [F] tensor with `index_add`; batch top-k takes the k·B
//!   largest of the whole batch with one `topk` and sorts their flat indices;
//! - the **host** form (CPU), where a host read costs nothing and data-dependent shapes are
//!   what keeps the step fast: AuxK gathers only the dead latents' columns, offsets are
//!   `bincount` + `cumsum`, batch top-k keeps the values above a sampled bound and takes
//!   the k·B largest of those (`arch::batchtopk::batch_topk_search`).
//!
//! Both forms give the same codes, losses and gradients (tests/sae_core.rs runs both on the
//! CPU and compares them). Each host read that the host form performs in a step goes
//! through [`host_read`], so `grep -n host_read src/` lists them all, and
//! [`host_reads`] counts them (per thread) for tests: a sync-free step performs none.

use std::cell::Cell;

use tch::Device;

/// Which form of the training step to run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncFree {
    /// Sync-free on CUDA (and any other accelerator), the host form on the CPU.
    #[default]
    Auto,
    /// The sync-free form on every device (tests run it on the CPU).
    Always,
    /// The host form on every device.
    Never,
}

impl SyncFree {
    /// Whether to run the sync-free form for tensors on `device`.
    pub fn on(self, device: Device) -> bool {
        match self {
            SyncFree::Auto => device != Device::Cpu,
            SyncFree::Always => true,
            SyncFree::Never => false,
        }
    }
}

thread_local! {
    static HOST_READS: Cell<u64> = const { Cell::new(0) };
}

/// Run `read`, an operation that makes the host wait for the device (a value read, or an
/// op whose output shape depends on the data), and count it. `why` says what the read is
/// for; it documents the call site.
pub fn host_read<T>(why: &'static str, read: impl FnOnce() -> T) -> T {
    let _ = why;
    HOST_READS.with(|n| n.set(n.get() + 1));
    read()
}

/// How many [`host_read`]s this thread has performed so far.
pub fn host_reads() -> u64 {
    HOST_READS.with(|n| n.get())
}
