//! Process-wide group-commit counters: how many groups the writers made durable, how many
//! operations they carried and how long making them durable took (journal write and
//! `fdatasync`, with sled applying the group meanwhile). Read by `puente bench`; the same
//! observations feed the group-size and flush-time histograms of the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::MAX_GROUP_COMMIT;

static GROUPS: AtomicU64 = AtomicU64::new(0);
static OPERATIONS: AtomicU64 = AtomicU64::new(0);
static FLUSH_NANOS: AtomicU64 = AtomicU64::new(0);
/// Operations per group: 1, 2, 4 ... up to [`MAX_GROUP_COMMIT`].
static GROUP_SIZES: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::new(exponential_buckets(
        1.0,
        2.0,
        MAX_GROUP_COMMIT.ilog2() as u16 + 1,
    ))
});
/// Seconds to make a group durable: 50 µs to about 1.6 s (an `fdatasync` is 0.1 to 10 ms on
/// healthy disks).
static FLUSH_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(50e-6, 2.0, 16)));

/// A snapshot of the group-commit counters of every store in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Groups made durable (one journal write and `fdatasync` each).
    pub groups: u64,
    /// Operations those groups carried.
    pub operations: u64,
    /// Time spent making them durable, in nanoseconds.
    pub flush_nanos: u64,
}

impl CommitStats {
    /// The counts since `earlier`.
    #[must_use]
    pub fn since(self, earlier: CommitStats) -> CommitStats {
        CommitStats {
            groups: self.groups - earlier.groups,
            operations: self.operations - earlier.operations,
            flush_nanos: self.flush_nanos - earlier.flush_nanos,
        }
    }

    /// Mean operations per group.
    #[must_use]
    pub fn mean_group_size(&self) -> f64 {
        self.operations as f64 / self.groups.max(1) as f64
    }

    /// Mean time to make one group durable, in microseconds.
    #[must_use]
    pub fn mean_flush_micros(&self) -> f64 {
        self.flush_nanos as f64 / 1e3 / self.groups.max(1) as f64
    }
}

/// The counters now.
#[must_use]
pub fn commit_stats() -> CommitStats {
    CommitStats {
        groups: GROUPS.load(Ordering::Relaxed),
        operations: OPERATIONS.load(Ordering::Relaxed),
        flush_nanos: FLUSH_NANOS.load(Ordering::Relaxed),
    }
}

/// The histograms of group sizes (operations) and flush times (seconds) of every store in this
/// process; clones share their counts.
#[must_use]
pub fn commit_histograms() -> (Histogram, Histogram) {
    (GROUP_SIZES.clone(), FLUSH_SECONDS.clone())
}

/// Counts one durable group of `operations` whose flush took `flush_nanos`.
pub(super) fn record_group(operations: usize, flush_nanos: u64) {
    GROUPS.fetch_add(1, Ordering::Relaxed);
    OPERATIONS.fetch_add(operations as u64, Ordering::Relaxed);
    FLUSH_NANOS.fetch_add(flush_nanos, Ordering::Relaxed);
    GROUP_SIZES.observe(operations as f64);
    FLUSH_SECONDS.observe(flush_nanos as f64 / 1e9);
}
