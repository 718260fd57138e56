//! Reloading the TLS material: the server certificate, key, client CA bundle and CRL file are
//! re-read when they change or on SIGHUP, and stale CRLs are reported.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::error;

use crate::audit;
use crate::pb::v1::AuditAction;
use crate::store::Store;
use crate::tls::TlsState;

/// How often the TLS files are checked for changes.
const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often a stale CRL is logged again.
const STALE_CRL_REPORT_INTERVAL: Duration = Duration::from_secs(600);

/// Reloads the TLS material when its files change or on SIGHUP, and reports stale CRLs, until
/// `stopping` turns true.
pub(super) async fn watch_tls_files(
    tls: Arc<TlsState>,
    store: Arc<dyn Store>,
    mut stopping: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut stamps = tls.file_stamps();
    let mut ticks = tokio::time::interval(FILE_POLL_INTERVAL);
    let mut stale_reported_at: Option<tokio::time::Instant> = None;
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = ticks.tick() => false,
            _ = hangup_received => true,
            _ = stopping.changed() => return,
        };
        let current = tls.file_stamps();
        if forced || current != stamps {
            stamps = current;
            match tls.reload() {
                Ok(Some(crl)) => {
                    let mut event = audit::event(AuditAction::CrlApplied, None);
                    event.crl_number = crl.number;
                    event.reason = "CRL file changed".into();
                    if let Err(e) = store.record(vec![event.into()]).await {
                        error!(error = %e, "cannot record the CRL in the audit log");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "TLS reload failed; the previous certificates stay in force")
                }
            }
        }
        if stale_reported_at.is_none_or(|at| at.elapsed() >= STALE_CRL_REPORT_INTERVAL) {
            stale_reported_at = (tls.report_stale_crls() > 0).then(tokio::time::Instant::now);
        }
    }
}
