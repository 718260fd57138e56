//! State the metrics follow between scrapes: each agency's inbox delivery cursor (moved by its
//! streams, seeded from the store at start) and the certificates of its open connections.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;

use crate::pb::v1::DeliveryState;
use crate::store::{Store, StoreError};

/// Inbox entries walked back per agency at start to find its last delivered one; an agency
/// further behind reads as its whole inbox until its next stream.
pub(super) const BACKLOG_SEED_WALK: u64 = 1_000_000;
/// Inbox entries read per round of that walk.
const BACKLOG_SEED_CHUNK: usize = 256;

// === Inbox delivery cursors ===

/// The delivery progress of one inbox stream.
pub struct InboxProgress {
    pub(super) cursor: Arc<AtomicU64>,
    pub(super) delivered: Counter,
}

impl InboxProgress {
    /// Counts the entry `sequence` as handed to the stream.
    pub fn delivered(&self, sequence: u64) {
        self.delivered.inc();
        self.cursor.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Passes over the entry `sequence`, whose message was erased: not backlog any more.
    pub fn skipped(&self, sequence: u64) {
        self.cursor.fetch_max(sequence, Ordering::Relaxed);
    }
}

/// The highest inbox sequence handed to (or skipped by) a stream of each agency.
#[derive(Default)]
pub(super) struct InboxCursors(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl InboxCursors {
    pub(super) fn get(&self, agency: &str) -> Arc<AtomicU64> {
        let mut cursors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(cursors.entry(agency.to_string()).or_default())
    }

    pub(super) fn value(&self, agency: &str) -> u64 {
        let cursors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        cursors
            .get(agency)
            .map_or(0, |cursor| cursor.load(Ordering::Relaxed))
    }
}

/// The latest inbox sequence of `agency` at or below `last` whose delivery state is DELIVERED
/// or beyond, if one is within [`BACKLOG_SEED_WALK`] entries of `last`.
pub(super) async fn last_delivered(
    store: &dyn Store,
    agency: &str,
    last: u64,
) -> Result<Option<u64>, StoreError> {
    let floor = last.saturating_sub(BACKLOG_SEED_WALK);
    let mut high = last;
    while high > floor {
        let low = high.saturating_sub(BACKLOG_SEED_CHUNK as u64).max(floor);
        let entries = store
            .inbox_range(agency, low, high, BACKLOG_SEED_CHUNK)
            .await?;
        for (sequence, message_id) in entries.into_iter().rev() {
            // No delivery record means PENDING; an erased message has none either.
            let Some(record) = store.delivery(&message_id, agency).await? else {
                continue;
            };
            if record.state != DeliveryState::Pending as i32 {
                return Ok(Some(sequence));
            }
        }
        high = low;
    }
    Ok(None)
}

// === Certificates of open connections ===

/// The `not_after` (Unix seconds) of the certificates of each agency's open connections, with
/// how many connections use each.
#[derive(Default)]
pub(super) struct Certificates(Mutex<HashMap<String, BTreeMap<i64, usize>>>);

impl Certificates {
    pub(super) fn open(self: &Arc<Self>, agency: &str, not_after: i64) -> ConnectionGuard {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *open
            .entry(agency.to_string())
            .or_default()
            .entry(not_after)
            .or_default() += 1;
        ConnectionGuard {
            certificates: Arc::clone(self),
            agency: agency.to_string(),
            not_after,
        }
    }

    /// Each connected agency and the latest `not_after` among its connections: a renewed
    /// certificate expires later than the one it replaces, so this is the one in use.
    pub(super) fn latest(&self) -> Vec<(String, i64)> {
        let open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut latest: Vec<_> = open
            .iter()
            .filter_map(|(agency, expiries)| Some((agency.clone(), *expiries.last_key_value()?.0)))
            .collect();
        latest.sort();
        latest
    }
}

/// One open connection of an agency, counted in the certificate expiry gauge until dropped.
pub struct ConnectionGuard {
    certificates: Arc<Certificates>,
    agency: String,
    not_after: i64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self
            .certificates
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(expiries) = open.get_mut(&self.agency) else {
            return;
        };
        if let Some(count) = expiries.get_mut(&self.not_after) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                expiries.remove(&self.not_after);
            }
        }
        if expiries.is_empty() {
            open.remove(&self.agency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use crate::identity::Caller;

    fn caller(agency: &str, not_after: i64) -> Caller {
        let id =
            crate::identity::SpiffeId::parse(&format!("spiffe://puente.local/agency/{agency}"))
                .unwrap();
        Caller {
            role: id.role("puente.local").unwrap(),
            id,
            serial: "01".into(),
            not_after,
        }
    }

    #[test]
    fn certificate_expiry_follows_the_latest_certificate_of_open_connections() {
        let metrics = Metrics::default();
        let old = metrics.agency_connected(&caller("ES-CNP", 1_000)).unwrap();
        let renewed = metrics.agency_connected(&caller("ES-CNP", 5_000)).unwrap();
        let other = metrics
            .agency_connected(&caller("CO-DIJIN", 2_000))
            .unwrap();
        assert_eq!(
            metrics.certificates.latest(),
            [
                ("CO-DIJIN".to_string(), 2_000),
                ("ES-CNP".to_string(), 5_000)
            ]
        );
        drop(renewed);
        assert_eq!(
            metrics.certificates.latest(),
            [
                ("CO-DIJIN".to_string(), 2_000),
                ("ES-CNP".to_string(), 1_000)
            ]
        );
        drop((old, other));
        assert!(metrics.certificates.latest().is_empty());
    }

    #[test]
    fn only_agencies_are_tracked_for_certificate_expiry() {
        let metrics = Metrics::default();
        let id = crate::identity::SpiffeId::parse("spiffe://puente.local/auditor/ana").unwrap();
        let auditor = Caller {
            role: id.role("puente.local").unwrap(),
            id,
            serial: "02".into(),
            not_after: 1_000,
        };
        assert!(metrics.agency_connected(&auditor).is_none());
    }

    #[test]
    fn inbox_cursors_only_move_forward() {
        let metrics = Metrics::default();
        let progress = metrics.inbox_opened("ES-CNP", 5);
        progress.delivered(6);
        progress.delivered(7);
        // A second stream replaying from the start does not move the cursor back.
        let replay = metrics.inbox_opened("ES-CNP", 0);
        replay.delivered(1);
        assert_eq!(metrics.cursors.value("ES-CNP"), 7);
        assert_eq!(metrics.delivered.get(), 3);
        assert_eq!(metrics.cursors.value("CO-DIJIN"), 0);
    }
}
