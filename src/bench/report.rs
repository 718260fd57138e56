//! The report of a bench run: what it measured, as text ([`Report`]'s `Display`) or JSON
//! (`Serialize`).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

// === The report ===

/// Everything a run measured; a section is absent when it was not measured.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    /// Size of each message's text, and of each echo payload.
    pub payload_bytes: usize,
    /// Sending connections.
    pub senders: usize,
    /// Reading connections.
    pub readers: usize,
    /// The messages stored before the measured run.
    pub preload: Option<Preload>,
    /// The bare-tonic bound.
    pub bound: Option<Bound>,
    /// The measured run.
    pub durable: Option<Durable>,
    /// Durable msg/s over bound msg/s.
    pub durable_to_bound: Option<f64>,
    /// One `fdatasync` of a 4 KiB overwrite in the data directory.
    pub fdatasync: Option<Percentiles>,
    /// The restart after the measured run.
    pub restart: Option<Restart>,
    /// Of this process: the server and every client.
    pub memory: Option<Memory>,
    /// Audit proofs timed after the restart.
    pub proofs: Option<Proofs>,
}

/// The preload: messages stored through the exchange's send handler, with no network.
#[derive(Debug, Serialize)]
pub(crate) struct Preload {
    /// Messages stored.
    pub messages: u64,
    /// How long that took.
    pub seconds: f64,
    /// Messages stored per second.
    pub per_second: f64,
}

/// The bare-tonic bound: echoes over the same TLS, in closed loops.
#[derive(Debug, Serialize)]
pub(crate) struct Bound {
    /// Echoes answered.
    pub messages: u64,
    /// How long that took.
    pub seconds: f64,
    /// Echoes per second.
    pub per_second: f64,
    /// Median round trip.
    pub rtt_p50_ms: f64,
    /// 99th percentile round trip.
    pub rtt_p99_ms: f64,
    /// CPU time of the whole process (echo server and clients) per echo, in µs (Linux only).
    pub cpu_us_per_message: Option<f64>,
}

/// The measured run: durable sends in closed loops, read and acknowledged by the readers.
#[derive(Debug, Serialize)]
pub(crate) struct Durable {
    /// Messages sent and durably accepted.
    pub messages: u64,
    /// How long that took.
    pub seconds: f64,
    /// Messages accepted per second.
    pub per_second: f64,
    /// From a send until its durable acceptance.
    pub send_to_ack: Percentiles,
    /// From a send until a reader received it; absent without readers.
    pub send_to_delivery: Option<Percentiles>,
    /// Store operations per group commit, every operation counted (sends, deliveries,
    /// acknowledgements).
    pub mean_group_commit: f64,
    /// Time to make one group durable: its journal write and `fdatasync`, with sled applying it
    /// meanwhile.
    pub mean_flush_ms: f64,
    /// CPU time of the whole process (server, senders and readers) per message, in µs (Linux
    /// only). Less the bound's figure, it is what the exchange costs beyond a bare gRPC call.
    pub cpu_us_per_message: Option<f64>,
}

/// The restart of the server after the measured run.
#[derive(Debug, Serialize)]
pub(crate) struct Restart {
    /// Messages in the store.
    pub stored: u64,
    /// From the shutdown request until `server::run` returned.
    pub stop_ms: f64,
    /// From starting the server until the first call was answered.
    pub ready_ms: f64,
}

/// Memory of this process (`/proc/self/status`).
#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    /// Resident set size.
    pub vm_rss_kib: u64,
    /// Peak resident set size.
    pub vm_hwm_kib: u64,
}

/// Audit proofs timed one call at a time, as an auditor would ask for them.
#[derive(Debug, Serialize)]
pub(crate) struct Proofs {
    /// Proofs of each kind timed.
    pub count: usize,
    /// The size of the tree they were proved in.
    pub tree_size: u64,
    /// As an auditor over gRPC; each answer waits for its own durable audit entry.
    pub inclusion: Percentiles,
    /// Consistency proofs as an auditor over gRPC.
    pub consistency: Percentiles,
    /// The same proofs computed in-process, after the server stopped.
    pub computed: Option<ComputedProofs>,
}

/// Proofs computed in-process from the stored hashes.
#[derive(Debug, Serialize)]
pub(crate) struct ComputedProofs {
    /// Inclusion proofs.
    pub inclusion: Percentiles,
    /// Consistency proofs.
    pub consistency: Percentiles,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place); zero when there are none.
    pub(super) fn of(samples: &mut [Duration]) -> Percentiles {
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = (p * samples.len() as f64).ceil() as usize;
            samples
                .get(rank.saturating_sub(1))
                .map_or(0.0, |d| millis(*d))
        };
        Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
        }
    }
}

/// A duration in milliseconds.
pub(super) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The report as aligned text, one figure per line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line =
            |label: &str, value: String| writeln!(f, "{:<36} {value}", format!("{label}:"));
        line("payload size", format!("{} B", self.payload_bytes))?;
        line("senders", self.senders.to_string())?;
        line("readers", self.readers.to_string())?;
        if let Some(preload) = &self.preload {
            line(
                "preloaded",
                format!(
                    "{} messages in {:.2} s ({:.0} msg/s)",
                    preload.messages, preload.seconds, preload.per_second
                ),
            )?;
        }
        if let Some(durable) = &self.durable {
            line("messages", durable.messages.to_string())?;
            line("duration", format!("{:.2} s", durable.seconds))?;
            line("durable rate", format!("{:.0} msg/s", durable.per_second))?;
            let ack = durable.send_to_ack;
            line("send->ack p50", format!("{:.2} ms", ack.p50_ms))?;
            line("send->ack p99", format!("{:.2} ms", ack.p99_ms))?;
            line("send->ack p99.9", format!("{:.2} ms", ack.p999_ms))?;
            if let Some(delivery) = durable.send_to_delivery {
                line("send->delivery p50", format!("{:.2} ms", delivery.p50_ms))?;
                line("send->delivery p99", format!("{:.2} ms", delivery.p99_ms))?;
            }
            line(
                "group commit size (mean)",
                format!("{:.1} operations", durable.mean_group_commit),
            )?;
            line(
                "group commit flush (mean)",
                format!("{:.2} ms", durable.mean_flush_ms),
            )?;
            if let Some(cpu) = durable.cpu_us_per_message {
                line("CPU per message (process)", format!("{cpu:.0} µs"))?;
            }
        }
        if let Some(bound) = &self.bound {
            line(
                "bound rate (bare tonic echo)",
                format!(
                    "{:.0} msg/s ({} echoes in {:.2} s)",
                    bound.per_second, bound.messages, bound.seconds
                ),
            )?;
            line("bound RTT p50", format!("{:.2} ms", bound.rtt_p50_ms))?;
            line("bound RTT p99", format!("{:.2} ms", bound.rtt_p99_ms))?;
            if let Some(cpu) = bound.cpu_us_per_message {
                line("bound CPU per echo (process)", format!("{cpu:.0} µs"))?;
            }
        }
        if let Some(ratio) = self.durable_to_bound {
            line("durable / bound", format!("{ratio:.3}"))?;
        }
        if let Some(sync) = &self.fdatasync {
            line(
                "fdatasync p50 (data dir)",
                format!("{:.3} ms (p99 {:.3} ms)", sync.p50_ms, sync.p99_ms),
            )?;
            if let (Some(durable), Some(bound)) = (&self.durable, &self.bound) {
                let target = 2.0 * bound.rtt_p50_ms + sync.p50_ms;
                line(
                    "2 x bound RTT p50 + fdatasync",
                    format!(
                        "{target:.3} ms; send->ack p50 is {:.2}x that",
                        durable.send_to_ack.p50_ms / target
                    ),
                )?;
            }
        }
        line("summary", self.summary())?;
        if let Some(restart) = &self.restart {
            line(
                &format!("restart with {} stored", restart.stored),
                format!(
                    "ready in {:.1} ms (stop took {:.1} ms)",
                    restart.ready_ms, restart.stop_ms
                ),
            )?;
        }
        if let Some(memory) = &self.memory {
            let mib = |kib: u64| kib as f64 / 1024.0;
            line(
                "VmRSS (server and clients)",
                format!("{:.1} MiB", mib(memory.vm_rss_kib)),
            )?;
            line(
                "VmHWM (server and clients)",
                format!("{:.1} MiB", mib(memory.vm_hwm_kib)),
            )?;
        }
        if let Some(proofs) = &self.proofs {
            let at = format!("({} each, tree size {})", proofs.count, proofs.tree_size);
            let (inclusion, consistency) = (proofs.inclusion, proofs.consistency);
            line(
                "inclusion proof p50",
                format!("{:.2} ms {at}", inclusion.p50_ms),
            )?;
            line("inclusion proof p99", format!("{:.2} ms", inclusion.p99_ms))?;
            line(
                "consistency proof p50",
                format!("{:.2} ms", consistency.p50_ms),
            )?;
            line(
                "consistency proof p99",
                format!("{:.2} ms", consistency.p99_ms),
            )?;
            if let Some(computed) = &proofs.computed {
                let (inclusion, consistency) = (computed.inclusion, computed.consistency);
                line(
                    "inclusion proof computed p50/p99",
                    format!("{:.3} / {:.3} ms", inclusion.p50_ms, inclusion.p99_ms),
                )?;
                line(
                    "consistency proof computed p50/p99",
                    format!("{:.3} / {:.3} ms", consistency.p50_ms, consistency.p99_ms),
                )?;
            }
        }
        Ok(())
    }
}

impl Report {
    /// The run in one line.
    fn summary(&self) -> String {
        let setup = format!(
            "{} B texts, {} senders, {} readers",
            self.payload_bytes, self.senders, self.readers
        );
        match (&self.durable, &self.bound, self.durable_to_bound) {
            (Some(durable), Some(bound), Some(ratio)) => format!(
                "{:.0} durable msg/s = {:.1}% of the bare-tonic bound ({:.0} msg/s); send->ack p99 {:.2} ms; {setup}",
                durable.per_second,
                ratio * 100.0,
                bound.per_second,
                durable.send_to_ack.p99_ms
            ),
            (Some(durable), _, _) => format!(
                "{:.0} durable msg/s (bound not measured); send->ack p99 {:.2} ms; {setup}",
                durable.per_second, durable.send_to_ack.p99_ms
            ),
            (None, Some(bound), _) => format!(
                "bare-tonic bound {:.0} msg/s, RTT p50 {:.2} ms; {setup}",
                bound.per_second, bound.rtt_p50_ms
            ),
            (None, None, _) => format!("nothing measured; {setup}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::run::{sent_at, stamped_text};
    use super::super::servers::Budget;
    use super::*;
    use crate::pb::v1::{message, Message};

    #[test]
    fn the_send_instant_survives_the_text() {
        let sent = Duration::from_nanos(1_234_567_890);
        let text = stamped_text(sent, 1024);
        assert_eq!(text.len(), 1024);
        let message = Message {
            content: Some(message::Content::Text(text)),
            ..Default::default()
        };
        assert_eq!(sent_at(&message), Some(sent));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!((p.p50_ms, p.p99_ms, p.p999_ms), (500.0, 990.0, 999.0));
        assert_eq!(Percentiles::of(&mut []).p50_ms, 0.0);
    }

    #[test]
    fn a_counted_budget_issues_exactly_its_tickets() {
        let budget = Budget::new(3, None);
        let tickets: Vec<u64> = std::iter::from_fn(|| budget.next()).collect();
        assert_eq!(tickets, [0, 1, 2]);
        assert_eq!(budget.next(), None);
    }
}
