//! The measurements of a bench run: the bare-tonic bound, the preload and the durable run.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Streaming;

use super::after::{cpu_per_message, open_data_keys, process_cpu};
use super::report::{Bound, Durable, Percentiles, Preload};
use super::servers::{join_all, Budget, Running, Service};
use super::setup::{Cast, Pki};
use super::{BenchError, Options, ACKS_IN_FLIGHT, PRELOAD_IN_FLIGHT, STALL_TIMEOUT, UNREAD_AGENCY};
use crate::config::Config;
use crate::directory::{AgencyEntry, Directory};
use crate::exchange::ExchangeService;
use crate::identity::{AgencyId, Peer};
use crate::pb::bench::v1::echo_service_client::EchoServiceClient;
use crate::pb::bench::v1::EchoRequest;
use crate::pb::v1::exchange_service_client::ExchangeServiceClient;
use crate::pb::v1::exchange_service_server::ExchangeService as _;
use crate::pb::v1::{
    message, send_message_request, AcknowledgeMessageRequest, DeliveryState, Evaluation,
    HandlingCode, InformationAccuracy, Message, Region, SendMessageRequest, SourceReliability,
    StreamInboxRequest, StreamInboxResponse, Topic,
};
use crate::store::{commit_stats, Store};

// === The bare-tonic bound ===

/// The echo service on the run's TLS, called by `--senders` clients in closed loops with
/// payloads of `--size` bytes.
pub(super) async fn measure_bound(
    options: &Options,
    cast: &Cast,
    config: Config,
) -> Result<Bound, BenchError> {
    let mut server = Running::start(Service::Echo, config).await?;
    let mut clients = Vec::with_capacity(options.senders);
    for i in 0..options.senders {
        let channel = server.connect(&cast.sender(i).identity).await?;
        clients.push(EchoServiceClient::new(channel));
    }
    let payload = vec![b'x'; options.size];
    let budget = Budget::new(options.messages, options.duration);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let (budget, payload) = (budget.clone(), payload.clone());
        tasks.spawn(async move {
            let mut rtts = Vec::new();
            while budget.next().is_some() {
                let sent = Instant::now();
                client
                    .echo(EchoRequest {
                        payload: payload.clone(),
                    })
                    .await
                    .map_err(BenchError::call("an echo call failed"))?;
                rtts.push(sent.elapsed());
            }
            Ok::<_, BenchError>(rtts)
        });
    }
    let mut rtts: Vec<Duration> = join_all(tasks).await?.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    let cpu_after = process_cpu();
    server.stop().await?;
    let rtt = Percentiles::of(&mut rtts);
    Ok(Bound {
        messages: rtts.len() as u64,
        seconds: elapsed.as_secs_f64(),
        per_second: rtts.len() as f64 / elapsed.as_secs_f64(),
        rtt_p50_ms: rtt.p50_ms,
        rtt_p99_ms: rtt.p99_ms,
        cpu_us_per_message: cpu_per_message(cpu_before, cpu_after, rtts.len() as u64),
    })
}

// === Setup and preload ===

/// Registers the run's agencies and stores `--preload` messages, before the server starts. Both
/// go through the library as the server uses it: the directory, and the exchange's own send
/// handler, called with the sender's identity as a connection would carry it.
pub(super) async fn prepare(
    options: &Options,
    cast: &Cast,
    pki: &Pki,
    data_dir: &Path,
    progress: fn(&str),
) -> Result<Option<Preload>, BenchError> {
    let config = pki.config(data_dir.to_path_buf());
    let store = crate::store::open(data_dir, open_data_keys(&pki.data_key)?).map_err(|source| {
        BenchError::Store {
            what: format!("cannot open a store in {}", data_dir.display()),
            source,
        }
    })?;
    let directory = Arc::new(
        Directory::load(Arc::clone(&store))
            .await
            .map_err(|source| BenchError::Directory {
                what: "cannot load the agency directory".into(),
                source,
            })?,
    );
    let unread_id = AgencyId::parse(UNREAD_AGENCY).map_err(|source| BenchError::Identity {
        what: format!("{UNREAD_AGENCY:?} is no agency id"),
        source,
    })?;
    let unread = (unread_id, Region::Celac);
    let agencies = cast
        .senders
        .iter()
        .map(|s| (s.id.clone(), Region::Eu))
        .chain(cast.readers.iter().map(|r| (r.id.clone(), Region::Celac)))
        .chain([unread]);
    for (id, region) in agencies {
        let entry = AgencyEntry {
            name: format!("Bench agency {id}"),
            country: id.as_str()[..2].to_string(),
            agency_id: id.clone(),
            region,
            status: None,
        };
        directory
            .register(entry, None)
            .await
            .map_err(|source| BenchError::Directory {
                what: format!("cannot register agency {id}"),
                source,
            })?;
    }

    let preload = if options.preload > 0 {
        Some(preload(options, cast, &config, &store, &directory, progress).await?)
    } else {
        None
    };
    // The server opens the store next: every handle on it must be gone by then.
    drop(directory);
    store.close().await;
    Ok(preload)
}

/// Stores `--preload` messages for [`UNREAD_AGENCY`] through the exchange's own send handler,
/// [`PRELOAD_IN_FLIGHT`] at a time.
pub(super) async fn preload(
    options: &Options,
    cast: &Cast,
    config: &Config,
    store: &Arc<dyn Store>,
    directory: &Arc<Directory>,
    progress: fn(&str),
) -> Result<Preload, BenchError> {
    progress(&format!("preloading {} messages", options.preload));
    // Inbox streams end when this turns true; the preload opens none.
    let (_stopping, stopping) = watch::channel(false);
    let exchange = ExchangeService::new(
        Arc::clone(store),
        Arc::clone(directory),
        config.limits.clone(),
        stopping,
        Arc::default(),
    );
    let peers: Arc<[Peer]> = cast
        .senders
        .iter()
        .map(|s| s.identity.peer(&config.trust_domain))
        .collect::<Result<_, BenchError>>()?;
    let budget = Budget::new(options.preload, None);
    let size = options.size;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..PRELOAD_IN_FLIGHT {
        let (exchange, peers, budget) = (exchange.clone(), Arc::clone(&peers), budget.clone());
        tasks.spawn(async move {
            while let Some(ticket) = budget.next() {
                let text = stamped_text(Duration::ZERO, size);
                let mut request = tonic::Request::new(text_message(
                    format!("preload-{ticket}"),
                    UNREAD_AGENCY,
                    text,
                ));
                let peer = peers[ticket as usize % peers.len()].clone();
                request.extensions_mut().insert(peer);
                exchange
                    .send_message(request)
                    .await
                    .map_err(BenchError::call("a preloaded send failed"))?;
            }
            Ok::<_, BenchError>(())
        });
    }
    join_all(tasks).await?;
    let elapsed = started.elapsed();
    Ok(Preload {
        messages: options.preload,
        seconds: elapsed.as_secs_f64(),
        per_second: options.preload as f64 / elapsed.as_secs_f64(),
    })
}

/// Times `fdatasync` of a 4 KiB overwrite in a preallocated file in `data_dir`: the least one
/// durable answer costs on this disk.
pub(super) fn measure_fdatasync(data_dir: &Path) -> Result<Percentiles, BenchError> {
    const SYNCS: usize = 500;
    const BLOCK: usize = 4096;
    let path = data_dir.join("bench-fdatasync.tmp");
    let io = |what: &str| {
        let what = format!("cannot {what} {}", path.display());
        move |source| BenchError::Io { what, source }
    };
    let mut file = std::fs::File::create(&path).map_err(io("create"))?;
    let block = vec![0x5a; BLOCK];
    for _ in 0..SYNCS {
        file.write_all(&block).map_err(io("write"))?;
    }
    file.sync_all().map_err(io("sync"))?;
    let mut samples = Vec::with_capacity(SYNCS);
    for i in 0..SYNCS {
        let started = Instant::now();
        file.write_all_at(&block, (i * BLOCK) as u64)
            .map_err(io("write"))?;
        file.sync_data().map_err(io("sync"))?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).map_err(io("remove"))?;
    Ok(Percentiles::of(&mut samples))
}

// === The durable run ===

/// The measured run: readers follow their inboxes, then `--senders` closed loops send until the
/// budget is spent, then the readers collect what they are owed.
pub(super) async fn measure_durable(
    options: &Options,
    cast: &Cast,
    server: &mut Running,
    base: Instant,
) -> Result<Durable, BenchError> {
    // Readers are following their inboxes before the first send.
    let mut owed = Vec::with_capacity(cast.readers.len());
    let mut readers = JoinSet::new();
    for reader in &cast.readers {
        let mut client = ExchangeServiceClient::new(server.connect(&reader.identity).await?);
        let stream = client
            .stream_inbox(StreamInboxRequest {
                after_sequence: 0,
                backlog_only: false,
            })
            .await
            .map_err(BenchError::call(format!(
                "cannot open the inbox stream of {}",
                reader.id
            )))?
            .into_inner();
        let (owed_tx, owed_rx) = watch::channel(None);
        owed.push(owed_tx);
        readers.spawn(read_inbox(
            client,
            stream,
            owed_rx,
            base,
            reader.id.to_string(),
        ));
    }
    let mut senders = Vec::with_capacity(options.senders);
    for i in 0..options.senders {
        let channel = server.connect(&cast.sender(i).identity).await?;
        senders.push(ExchangeServiceClient::new(channel));
    }

    let recipients = cast.recipients();
    let before = commit_stats();
    let budget = Budget::new(options.messages, options.duration);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in senders {
        tasks.spawn(send_loop(
            client,
            budget.clone(),
            Arc::clone(&recipients),
            options.size,
            base,
        ));
    }
    let mut send_to_ack = Vec::new();
    let mut sent_to = vec![0u64; recipients.len()];
    for (latencies, counts) in join_all(tasks).await? {
        send_to_ack.extend(latencies);
        for (total, count) in sent_to.iter_mut().zip(counts) {
            *total += count;
        }
    }
    let elapsed = started.elapsed();
    for (reader, count) in owed.iter().zip(&sent_to) {
        reader.send_replace(Some(*count));
    }
    let mut deliveries: Vec<Duration> = join_all(readers).await?.into_iter().flatten().collect();
    let cpu_after = process_cpu();
    let stats = commit_stats().since(before);

    let messages = send_to_ack.len() as u64;
    Ok(Durable {
        messages,
        seconds: elapsed.as_secs_f64(),
        per_second: messages as f64 / elapsed.as_secs_f64(),
        send_to_ack: Percentiles::of(&mut send_to_ack),
        send_to_delivery: (!cast.readers.is_empty()).then(|| Percentiles::of(&mut deliveries)),
        mean_group_commit: stats.mean_group_size(),
        mean_flush_ms: stats.mean_flush_micros() / 1e3,
        cpu_us_per_message: cpu_per_message(cpu_before, cpu_after, messages),
    })
}

/// One sender's closed loop. Returns its send→ack latencies and how many messages it sent to
/// each recipient.
pub(super) async fn send_loop(
    mut client: ExchangeServiceClient<Channel>,
    budget: Budget,
    recipients: Arc<[String]>,
    size: usize,
    base: Instant,
) -> Result<(Vec<Duration>, Vec<u64>), BenchError> {
    let mut latencies = Vec::new();
    let mut counts = vec![0u64; recipients.len()];
    while let Some(ticket) = budget.next() {
        let to = ticket as usize % recipients.len();
        let sent = Instant::now();
        let text = stamped_text(sent.duration_since(base), size);
        let request = text_message(format!("bench-{ticket}"), &recipients[to], text);
        client
            .send_message(request)
            .await
            .map_err(BenchError::call("a measured send failed"))?;
        latencies.push(sent.elapsed());
        counts[to] += 1;
    }
    Ok((latencies, counts))
}

/// One reader: follows the inbox stream of `agency`, acknowledges every message as received,
/// and stops once it has every message it is `owed` (known when the senders are done). Returns
/// its send→delivery latencies.
pub(super) async fn read_inbox(
    client: ExchangeServiceClient<Channel>,
    mut stream: Streaming<StreamInboxResponse>,
    mut owed: watch::Receiver<Option<u64>>,
    base: Instant,
    agency: String,
) -> Result<Vec<Duration>, BenchError> {
    let mut latencies = Vec::new();
    let mut acks = JoinSet::new();
    loop {
        let target = *owed.borrow_and_update();
        let received = latencies.len() as u64;
        let next = match target {
            Some(count) if received >= count => break,
            Some(count) => tokio::time::timeout(STALL_TIMEOUT, stream.message())
                .await
                .map_err(|_| BenchError::Stalled {
                    agency: agency.clone(),
                    received,
                    owed: count,
                })?,
            None => tokio::select! {
                next = stream.message() => next,
                changed = owed.changed() => {
                    changed.map_err(|_| BenchError::Abandoned)?;
                    continue;
                }
            },
        };
        let entry = next
            .map_err(|status| BenchError::Call {
                what: format!("the inbox stream of {agency} failed"),
                status,
            })?
            .ok_or_else(|| {
                BenchError::Delivery(format!("the inbox stream of {agency} ended early"))
            })?;
        let arrived = base.elapsed();
        let message = entry.message.ok_or_else(|| {
            BenchError::Delivery("an inbox entry came without its message".into())
        })?;
        let sent = sent_at(&message).ok_or_else(|| {
            BenchError::Delivery(format!(
                "message {} carries no send instant",
                message.message_id
            ))
        })?;
        latencies.push(arrived.saturating_sub(sent));

        if acks.len() >= ACKS_IN_FLIGHT {
            if let Some(done) = acks.join_next().await {
                done.map_err(|source| BenchError::Panicked {
                    what: "an acknowledgement task",
                    source,
                })??;
            }
        }
        let mut client = client.clone();
        acks.spawn(async move {
            client
                .acknowledge_message(AcknowledgeMessageRequest {
                    message_id: message.message_id,
                    state: DeliveryState::Received as i32,
                })
                .await
                .map_err(BenchError::call("an acknowledgement failed"))
        });
    }
    join_all(acks).await?;
    Ok(latencies)
}

/// A valid text message (topic, handling code and evaluation as an agency would send them) to
/// one recipient.
pub(super) fn text_message(
    client_message_id: String,
    recipient: &str,
    text: String,
) -> SendMessageRequest {
    SendMessageRequest {
        client_message_id,
        recipients: vec![recipient.to_string()],
        topic: Topic::FirearmsTrafficking as i32,
        subject: "Benchmark message".into(),
        handling: HandlingCode::H1 as i32,
        evaluation: Some(Evaluation {
            source_reliability: SourceReliability::B as i32,
            information_accuracy: InformationAccuracy::InformationAccuracy2 as i32,
        }),
        content: Some(send_message_request::Content::Text(text)),
        ..Default::default()
    }
}

/// A text of `size` bytes that starts with the send instant: `t=<nanoseconds> xxx…`.
pub(super) fn stamped_text(sent: Duration, size: usize) -> String {
    let mut text = format!("t={} ", sent.as_nanos());
    let padding = size.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', padding));
    text
}

/// The send instant at the start of a message's text.
pub(super) fn sent_at(message: &Message) -> Option<Duration> {
    let Some(message::Content::Text(text)) = &message.content else {
        return None;
    };
    let (nanos, _) = text.strip_prefix("t=")?.split_once(' ')?;
    nanos.parse().ok().map(Duration::from_nanos)
}
