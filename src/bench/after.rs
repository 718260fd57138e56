//! After the durable run: a restart, the process's memory and the latency of audit proofs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

use super::report::{millis, ComputedProofs, Memory, Percentiles, Proofs, Restart};
use super::servers::{start_exchange, Running};
use super::setup::{Cast, Identity};
use super::BenchError;
use crate::config::Config;
use crate::pb::v1::audit_service_client::AuditServiceClient;
use crate::pb::v1::{GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest};
use crate::store::DataKeys;

// === Restart, memory and proofs ===

/// Stops `server`, starts it again on the same configuration, and times its first answer.
pub(super) async fn restart(
    server: Running,
    config: &Config,
    cast: &Cast,
    stored: u64,
) -> Result<(Running, Restart), BenchError> {
    let stop = server.stop().await?;
    let (server, ready) = start_exchange(config, &cast.sender(0).identity)
        .await
        .map_err(|e| BenchError::Restart(Box::new(e)))?;
    Ok((
        server,
        Restart {
            stored,
            stop_ms: millis(stop),
            ready_ms: millis(ready),
        },
    ))
}

/// Resident memory of this process, server and clients together (Linux only).
pub(super) fn memory() -> Option<Memory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(Memory {
        vm_rss_kib: kib("VmRSS:")?,
        vm_hwm_kib: kib("VmHWM:")?,
    })
}

/// CPU time (user and system) this process has used so far, all threads (Linux only).
pub(super) fn process_cpu() -> Option<Duration> {
    // `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100 for this interface.
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces): state is field 3,
    // utime field 14, stime field 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Microseconds of process CPU per message between two readings of [`process_cpu`].
pub(super) fn cpu_per_message(
    before: Option<Duration>,
    after: Option<Duration>,
    messages: u64,
) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (messages > 0).then(|| used.as_secs_f64() * 1e6 / messages as f64)
}

/// Times `count` inclusion proofs of random leaves and `count` consistency proofs between random
/// sizes, one call at a time, in the tree of the latest checkpoint.
pub(super) async fn time_proofs(
    auditor: &Identity,
    server: &mut Running,
    count: usize,
) -> Result<Proofs, BenchError> {
    let mut client = AuditServiceClient::new(server.connect(auditor).await?);
    let tree_size = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_err(BenchError::call("cannot get the audit checkpoint"))?
        .into_inner()
        .tree_size;
    if tree_size == 0 {
        return Err(BenchError::EmptyAuditLog);
    }
    let below = |n: u64| OsRng.next_u64() % n;

    let mut inclusion = Vec::with_capacity(count);
    for _ in 0..count {
        let request = GetInclusionProofRequest {
            leaf_index: below(tree_size),
            tree_size,
        };
        let started = Instant::now();
        client
            .get_inclusion_proof(request)
            .await
            .map_err(BenchError::call("an inclusion proof failed"))?;
        inclusion.push(started.elapsed());
    }
    let mut consistency = Vec::with_capacity(count);
    for _ in 0..count {
        let (a, b) = (1 + below(tree_size), 1 + below(tree_size));
        let request = GetConsistencyProofRequest {
            from_size: a.min(b),
            to_size: a.max(b),
        };
        let started = Instant::now();
        client
            .get_consistency_proof(request)
            .await
            .map_err(BenchError::call("a consistency proof failed"))?;
        consistency.push(started.elapsed());
    }
    Ok(Proofs {
        count,
        tree_size,
        inclusion: Percentiles::of(&mut inclusion),
        consistency: Percentiles::of(&mut consistency),
        computed: None,
    })
}

/// The run's data keyring, for opening the store outside the server.
pub(super) fn open_data_keys(path: &Path) -> Result<Arc<DataKeys>, BenchError> {
    let keys = DataKeys::load(path).map_err(|source| BenchError::DataKeys {
        what: format!("cannot load the data keyring {}", path.display()),
        source,
    })?;
    Ok(Arc::new(keys))
}

/// Times `count` inclusion and consistency proofs computed straight from the stored hashes of a
/// log of `tree_size` entries, without RPC or the audit entry the service records for each
/// query: the cost of the proof itself. The server must be stopped.
pub(super) async fn time_computed_proofs(
    data_dir: &Path,
    data_key: &Path,
    tree_size: u64,
    count: usize,
) -> Result<ComputedProofs, BenchError> {
    let store = crate::store::open(data_dir, open_data_keys(data_key)?).map_err(|source| {
        BenchError::Store {
            what: format!("cannot open the store in {}", data_dir.display()),
            source,
        }
    })?;
    let below = |n: u64| OsRng.next_u64() % n;
    let mut inclusion = Vec::with_capacity(count);
    let mut consistency = Vec::with_capacity(count);
    for _ in 0..count {
        let leaf = below(tree_size);
        let started = Instant::now();
        store
            .inclusion_proof(leaf, tree_size)
            .await
            .map_err(BenchError::Proof)?;
        inclusion.push(started.elapsed());
        let (a, b) = (1 + below(tree_size), 1 + below(tree_size));
        let started = Instant::now();
        store
            .consistency_proof(a.min(b), a.max(b))
            .await
            .map_err(BenchError::Proof)?;
        consistency.push(started.elapsed());
    }
    store.close().await;
    Ok(ComputedProofs {
        inclusion: Percentiles::of(&mut inclusion),
        consistency: Percentiles::of(&mut consistency),
    })
}
