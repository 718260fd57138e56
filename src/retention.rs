//! Retention: erases messages whose topic's retention period has run out.
//!
//! A sweeper task looks, at start and then every `retention.sweep_interval`, for messages older
//! than their topic's period (`[retention]` in the configuration) and erases them through the
//! store, each with a MESSAGE_ERASED audit entry naming the period. The audit entries about the
//! message stay: they never held its content. Changing a period applies to messages already
//! stored at the next sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::audit;
use crate::config::Retention;
use crate::pb::v1::{AuditAction, Topic};
use crate::store::{Store, StoreError};
use crate::time::now_micros;

/// Messages erased per store operation (one group commit each).
const ERASE_BATCH: usize = 256;

/// Starts the sweeper; it ends when `stopping` turns true. Does nothing without periods.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    retention: Retention,
    mut stopping: watch::Receiver<bool>,
) {
    if retention.periods().is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(retention.sweep_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopping.changed() => return,
            }
            if *stopping.borrow() {
                return;
            }
            match sweep(store.as_ref(), &retention, now_micros()).await {
                Ok(0) => {}
                Ok(erased) => info!(erased, "erased messages past their retention period"),
                // Closed: the server is stopping. Otherwise the next sweep tries again.
                Err(StoreError::Closed) => return,
                Err(e) => error!(error = %e, "retention sweep failed; retrying at the next sweep"),
            }
        }
    });
}

/// Erases every message accepted before `now_micros` minus its topic's period. Returns how many
/// were erased.
///
/// # Errors
/// Store errors; messages erased before the error stay erased.
pub(crate) async fn sweep(
    store: &dyn Store,
    retention: &Retention,
    now_micros: i64,
) -> Result<usize, StoreError> {
    let mut erased = 0;
    for (topic, period) in retention.periods() {
        let cutoff = now_micros.saturating_sub(micros(period));
        let mut after = None;
        loop {
            let expired = store
                .accepted_before(topic as i32, cutoff, after.as_ref(), ERASE_BATCH)
                .await?;
            let Some(last) = expired.last().cloned() else {
                break;
            };
            let mut messages = Vec::with_capacity(expired.len());
            for entry in &expired {
                // A message and its retention entry are written and erased together, so a
                // missing record is damage: reported, and passed over so it cannot hold up
                // the erasure of later messages.
                let Some(record) = store.message(&entry.message_id).await? else {
                    error!(message_id = %entry.message_id, "retention entry without its message");
                    continue;
                };
                let mut event = audit::message_event(AuditAction::MessageErased, None, &record);
                event.reason = reason(topic, period);
                messages.push((entry.message_id.clone(), event.into()));
            }
            erased += store.erase(messages).await?;
            if expired.len() < ERASE_BATCH {
                break;
            }
            after = Some(last);
        }
    }
    Ok(erased)
}

/// The audit entry's reason: which topic's period ran out.
fn reason(topic: Topic, period: Duration) -> String {
    format!(
        "retention period of {} ({}) elapsed",
        topic.as_str_name(),
        humantime_serde::re::humantime::format_duration(period)
    )
}

fn micros(period: Duration) -> i64 {
    i64::try_from(period.as_micros()).unwrap_or(i64::MAX)
}
