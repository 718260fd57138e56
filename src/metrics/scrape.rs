//! Metrics read when the endpoint is scraped rather than counted as they happen: inbox
//! backlogs, certificate expiry of connected agencies, the audit log and its latest checkpoint,
//! and the size of the data directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use prost::Message as _;
use tracing::warn;

use super::tracked::{Certificates, InboxCursors};
use crate::directory::Directory;
use crate::pb::v1::AuditEvent;
use crate::store::{Store, StoreError};
use crate::time::now_micros;

/// How long the size of the data directory is reused between scrapes: walking a large object
/// directory on every scrape would cost more than the figure is worth.
const STORE_SIZE_CACHE: Duration = Duration::from_secs(15);

/// What is read when the endpoint is scraped rather than counted as it happens.
pub(super) struct Scraped {
    pub(super) store: Arc<dyn Store>,
    pub(super) directory: Arc<Directory>,
    pub(super) data_dir: PathBuf,
    pub(super) certificates: Arc<Certificates>,
    pub(super) cursors: Arc<InboxCursors>,
    /// The size of `data_dir` in bytes, and when it was measured.
    pub(super) store_size: Mutex<Option<(Instant, u64)>>,
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut backlog: Vec<(String, i64)> = self
            .directory
            .list()
            .into_iter()
            .map(|agency| {
                let last = *self.store.subscribe_inbox(&agency.agency_id).borrow();
                let behind = last.saturating_sub(self.cursors.value(&agency.agency_id));
                (agency.agency_id, saturating_i64(behind))
            })
            .collect();
        backlog.sort();
        labelled_gauges(
            &mut encoder,
            "inbox_backlog_messages",
            "Inbox entries of a registered agency not yet handed to any of its inbox streams: its last durable inbox sequence minus the highest sequence a stream delivered or resumed after (seeded from stored delivery states at start).",
            None,
            &backlog,
        )?;
        let now = now_micros() / 1_000_000;
        let expiries: Vec<(String, i64)> = self
            .certificates
            .latest()
            .into_iter()
            .map(|(agency, not_after)| (agency, not_after - now))
            .collect();
        labelled_gauges(
            &mut encoder,
            "agency_certificate_expiry",
            "Seconds until the client certificate of a connected agency expires (the latest-expiring one if its open connections use several); agencies without open connections are absent.",
            Some(&Unit::Seconds),
            &expiries,
        )?;
        gauge(
            &mut encoder,
            "audit_log_entries",
            "Entries in the audit log on stable storage.",
            None,
            match on_store(self.store.audit_size()) {
                Ok(size) => saturating_i64(size),
                Err(e) => {
                    warn!(error = %e, "cannot read the audit log size for metrics");
                    0
                }
            },
        )?;
        match self.checkpoint() {
            Ok(Some((size, age_seconds))) => {
                gauge(
                    &mut encoder,
                    "audit_checkpoint_size",
                    "Tree size of the latest signed audit checkpoint.",
                    None,
                    saturating_i64(size),
                )?;
                gauge(
                    &mut encoder,
                    "audit_checkpoint_age",
                    "Seconds since the newest audit entry the latest signed checkpoint covers was written; the signer signs within a second of growth, so this is the checkpoint's age, and it only matters while audit_log_entries exceeds audit_checkpoint_size.",
                    Some(&Unit::Seconds),
                    age_seconds,
                )?;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the latest audit checkpoint for metrics"),
        }
        gauge(
            &mut encoder,
            "store_size",
            "Bytes of the files under the data directory (measured at most every 15 s).",
            Some(&Unit::Bytes),
            saturating_i64(self.store_size()),
        )
    }
}

impl Scraped {
    /// The latest checkpoint's tree size and the age in seconds of the newest entry it covers.
    fn checkpoint(&self) -> Result<Option<(u64, i64)>, StoreError> {
        let Some((size, _note)) = on_store(self.store.latest_checkpoint())? else {
            return Ok(None);
        };
        let Some(index) = size.checked_sub(1) else {
            return Ok(None);
        };
        let Some(leaf) = on_store(self.store.audit_leaf(index))? else {
            return Ok(None);
        };
        let event = AuditEvent::decode(leaf.as_slice()).map_err(|source| StoreError::Corrupt {
            key: format!("audit leaf {index}"),
            source,
        })?;
        let age = (now_micros() - event.time_unix_micros).max(0) / 1_000_000;
        Ok(Some((size, age)))
    }

    fn store_size(&self) -> u64 {
        let mut cached = self
            .store_size
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *cached {
            Some((at, bytes)) if at.elapsed() < STORE_SIZE_CACHE => bytes,
            _ => {
                let bytes = directory_size(&self.data_dir);
                *cached = Some((Instant::now(), bytes));
                bytes
            }
        }
    }
}

/// Bytes of the regular files under `dir`, symbolic links not followed. Files that vanish
/// while walking (a journal file removed by the flusher) are passed over.
/// Waits for a store read. Collectors are encoded on a blocking thread of the runtime (see
/// `endpoint`), where waiting is allowed, never on one of its workers.
fn on_store<T>(read: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(read)
}

fn directory_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) if meta.is_file() => meta.len(),
            _ => 0,
        })
        .sum()
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// A gauge with one series per agency; nothing when there are none.
fn labelled_gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(String, i64)],
) -> Result<(), fmt::Error> {
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (agency, value) in values {
        let labels = [("agency", agency.as_str())];
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_size_sums_files_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 23]).unwrap();
        assert_eq!(directory_size(dir.path()), 123);
        assert_eq!(directory_size(&dir.path().join("missing")), 0);
    }
}
