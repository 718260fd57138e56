//! Process-wide group-commit counters: how many groups the writers made durable, how many
//! operations they carried and how long making them durable took (journal write and
//! `fdatasync`, with sled applying the group meanwhile). Read by `puente bench`.

use std::sync::atomic::{AtomicU64, Ordering};

static GROUPS: AtomicU64 = AtomicU64::new(0);
static OPERATIONS: AtomicU64 = AtomicU64::new(0);
static FLUSH_NANOS: AtomicU64 = AtomicU64::new(0);

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

/// Counts one durable group of `operations` whose flush took `flush_nanos`.
pub(super) fn record_group(operations: usize, flush_nanos: u64) {
    GROUPS.fetch_add(1, Ordering::Relaxed);
    OPERATIONS.fetch_add(operations as u64, Ordering::Relaxed);
    FLUSH_NANOS.fetch_add(flush_nanos, Ordering::Relaxed);
}
