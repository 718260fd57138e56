//! After the durable run: a restart, the process's memory and the latency of audit proofs.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use rand_core::{OsRng, RngCore};

use super::*;
use crate::cli::rpc_error;
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
) -> anyhow::Result<(Running, Restart)> {
    let stop = server.stop().await?;
    let (server, ready) = start_exchange(config, &cast.sender(0).identity)
        .await
        .context("the server failed to restart")?;
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

/// Times `count` inclusion proofs of random leaves and `count` consistency proofs between random
/// sizes, one call at a time, in the tree of the latest checkpoint.
pub(super) async fn time_proofs(
    auditor: &Identity,
    server: &mut Running,
    count: usize,
) -> anyhow::Result<Proofs> {
    let mut client = AuditServiceClient::new(server.connect(auditor).await?);
    let tree_size = client
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_err(rpc_error)
        .context("cannot get the audit checkpoint")?
        .into_inner()
        .tree_size;
    if tree_size == 0 {
        bail!("the audit log is empty: nothing to prove");
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
            .map_err(rpc_error)
            .context("an inclusion proof failed")?;
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
            .map_err(rpc_error)
            .context("a consistency proof failed")?;
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
pub(super) fn open_data_keys(path: &Path) -> anyhow::Result<Arc<DataKeys>> {
    Ok(Arc::new(DataKeys::load(path)?))
}

/// Times `count` inclusion and consistency proofs computed straight from the stored hashes of a
/// log of `tree_size` entries, without RPC or the audit entry the service records for each
/// query: the cost of the proof itself. The server must be stopped.
pub(super) async fn time_computed_proofs(
    data_dir: &Path,
    data_key: &Path,
    tree_size: u64,
    count: usize,
) -> anyhow::Result<ComputedProofs> {
    let store = crate::store::open(data_dir, open_data_keys(data_key)?)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let below = |n: u64| OsRng.next_u64() % n;
    let mut inclusion = Vec::with_capacity(count);
    let mut consistency = Vec::with_capacity(count);
    for _ in 0..count {
        let leaf = below(tree_size);
        let started = Instant::now();
        store.inclusion_proof(leaf, tree_size).await?;
        inclusion.push(started.elapsed());
        let (a, b) = (1 + below(tree_size), 1 + below(tree_size));
        let started = Instant::now();
        store.consistency_proof(a.min(b), a.max(b)).await?;
        consistency.push(started.elapsed());
    }
    store.close().await;
    Ok(ComputedProofs {
        inclusion: Percentiles::of(&mut inclusion),
        consistency: Percentiles::of(&mut consistency),
    })
}
