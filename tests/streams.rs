//! Idle and stalled inbox streams (issue #8): the `puente` binary holds 1,000 idle `StreamInbox`
//! streams and 10 streams whose client never reads while their agencies receive a backlog of
//! large messages, and other agencies exchange normally meanwhile. The server's resident memory,
//! read from `/proc/<pid>/status`, must stay within a bound derived from what one stream may
//! hold (`src/exchange/inbox.rs`), far below what buffering the backlog would take; every
//! message sent must arrive, and no send may wait on a stalled reader.
//!
//! `PUENTE_STREAMS_IDLE`, `PUENTE_STREAMS_STALLED`, `PUENTE_STREAMS_BACKLOG` and
//! `PUENTE_STREAMS_MESSAGE_KIB` scale the run; RELIABILITY.md ("Idle and stalled streams") has
//! a larger one.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    delivery_states, eventually_within, inbox_request, next_entry, open_inbox,
    register_agency_with, text_message, ServerProcess, TestPki, WAIT,
};
use futures::future::join_all;
use futures::stream::{self, StreamExt};
use puente::config::{DEFAULT_INBOX_STREAMS_PER_AGENCY, DEFAULT_MAX_RECIPIENTS};
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    AcknowledgeMessageRequest, Attachment, DeliveryState, Region, SendMessageRequest,
    StreamInboxResponse,
};
use tonic::transport::Channel;
use tonic::Streaming;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Concurrent senders of the backlog, each an agency of its own.
const BULK_SENDERS: usize = 4;
/// Pairs of agencies that exchange normally throughout: each side sends this many messages to
/// the other, reads its own inbox and acknowledges what it reads.
const PAIRS: usize = 4;
const PAIR_MESSAGES: usize = 50;
/// Calls in flight when registering, connecting or reading delivery states.
const SETUP_CONCURRENCY: usize = 16;

/// What a tonic client lets the server send on one stream before the application reads it:
/// hyper's default HTTP/2 stream window for clients, which tonic's `Endpoint` keeps. That much
/// of a stalled stream has left the server.
const CLIENT_STREAM_WINDOW: u64 = 2 * MIB;

/// Resident memory one idle stream may add: its reader task and two-slot buffer, its HTTP/2
/// stream and tonic call. Measured at 8 to 14 KiB (RELIABILITY.md); this leaves room for a
/// debug build and allocator rounding.
const IDLE_STREAM_BUDGET: u64 = 32 * KIB;
/// Everything else the load may leave resident: requests in flight (a few copies of a message
/// each, four senders), memory the allocator keeps after those are freed, the store's cache of
/// inbox and delivery records, the normal exchange. Measured at about 30 MiB.
const OTHER_BUDGET: u64 = 64 * MIB;
/// tonic's yield threshold: a chunk is what it encoded until it reached this, plus a message.
const TONIC_CHUNK: u64 = 32 * KIB;
/// One stream's h2 queue, less its last message: h2 accepts a chunk while less than hyper's
/// `max_send_buf_size` (400 KiB) is queued.
const H2_QUEUE: u64 = 400 * KIB + TONIC_CHUNK;

/// What one stalled stream may hold in the server when its encoded responses are at most `m`
/// bytes (src/exchange/inbox.rs): the stream's buffer, max(1 MiB, m); the chunk hyper holds
/// while it waits for send capacity, 32 KiB + m; h2's queue, 432 KiB + m. Chunks are encoded
/// into buffers that grow by doubling, so each may pin twice its length.
fn stalled_stream_bound(m: u64) -> u64 {
    m.max(MIB) + 2 * (TONIC_CHUNK + m) + 2 * (H2_QUEUE + m)
}

/// How many messages of `m` bytes may have been handed to a stalled stream: those the client
/// window took (the last one partly), h2's queue, hyper's chunk and the stream's buffer of two.
fn stalled_stream_messages(m: u64) -> usize {
    let fits = |bytes: u64| (bytes / m + 1) as usize;
    fits(CLIENT_STREAM_WINDOW) + fits(H2_QUEUE) + fits(TONIC_CHUNK) + 2
}

/// The size of the run.
struct Scale {
    idle: usize,
    stalled: usize,
    backlog: usize,
    message_bytes: usize,
}

impl Scale {
    fn from_env() -> Scale {
        let scale = Scale {
            idle: env_usize("PUENTE_STREAMS_IDLE", 1_000),
            stalled: env_usize("PUENTE_STREAMS_STALLED", 10),
            backlog: env_usize("PUENTE_STREAMS_BACKLOG", 300),
            message_bytes: env_usize("PUENTE_STREAMS_MESSAGE_KIB", 512) * KIB as usize,
        };
        assert!(
            scale.idle >= 1 && scale.stalled >= 1,
            "at least one stream of each kind"
        );
        assert!(
            scale.backlog >= 32,
            "a backlog under 32 messages cannot tell buffering apart"
        );
        scale
    }

    /// Agencies that hold the idle streams, each up to the default per-agency stream limit.
    fn idle_agencies(&self) -> usize {
        self.idle.div_ceil(DEFAULT_INBOX_STREAMS_PER_AGENCY)
    }
}

/// A positive integer from the environment, or `default`; panics on anything else, so a typo
/// never runs another test silently.
fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(value) => match value.parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={value:?} is not a positive integer"),
        },
    }
}

/// Resident memory of a process, in bytes: now (`VmRSS`) and at its peak (`VmHWM`).
#[derive(Clone, Copy)]
struct Memory {
    rss: u64,
    hwm: u64,
}

fn memory(pid: u32) -> Memory {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix(" kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {path}"))
            * KIB
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// A message whose subject is its `client_message_id`, so the reader can name what it got.
fn named(id: &str, recipients: &[&str], text: &str) -> SendMessageRequest {
    let mut request = text_message(id, recipients, text);
    request.subject = id.to_string();
    request
}

/// The `n`th message of the backlog to the `group`th group of recipients: an attachment of
/// `bytes` bytes. Its subject names it without the group.
fn bulk(n: usize, group: usize, recipients: &[&str], bytes: usize) -> SendMessageRequest {
    let mut request = text_message(
        &format!("bulk-{n}-{group}"),
        recipients,
        "Ledger scan attached.",
    );
    request.subject = format!("bulk-{n}");
    request.attachments = vec![Attachment {
        filename: format!("ledger-{n}.bin"),
        media_type: "application/octet-stream".into(),
        data: vec![(n % 251) as u8; bytes],
    }];
    request
}

/// Sends `request`; panics if it fails or waits on anything for longer than [`WAIT`].
async fn send(client: &mut ExchangeServiceClient<Channel>, request: SendMessageRequest) -> String {
    let id = request.client_message_id.clone();
    tokio::time::timeout(WAIT, client.send_message(request))
        .await
        .unwrap_or_else(|_| panic!("send {id} did not complete within {WAIT:?}"))
        .unwrap_or_else(|s| panic!("send {id} failed: {s:?}"))
        .into_inner()
        .message_id
}

/// Registers `ids` in `region`.
async fn register_all(pki: &TestPki, addr: SocketAddr, ids: &[String], region: Region) {
    let admin = pki.admin_client("root", addr).await;
    stream::iter(ids)
        .for_each_concurrent(SETUP_CONCURRENCY, |id| {
            let mut admin = admin.clone();
            async move {
                register_agency_with(&mut admin, id, region).await;
            }
        })
        .await;
}

/// One connected client per agency of `ids`, in order.
async fn clients(
    pki: &TestPki,
    addr: SocketAddr,
    ids: &[String],
) -> Vec<ExchangeServiceClient<Channel>> {
    stream::iter(ids)
        .map(|id| pki.agency_client(id, addr))
        .buffered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// Sends `PAIR_MESSAGES` messages to `to`.
async fn send_to_partner(mut client: ExchangeServiceClient<Channel>, from: String, to: String) {
    for n in 0..PAIR_MESSAGES {
        let id = format!("{from}-to-{to}-{n}");
        send(
            &mut client,
            named(&id, &[&to], "Container MSKU 123 leaves Santos on Friday."),
        )
        .await;
    }
}

/// Reads `PAIR_MESSAGES` entries of the caller's inbox, acknowledging each; returns their
/// subjects.
async fn read_and_acknowledge(mut client: ExchangeServiceClient<Channel>) -> BTreeSet<String> {
    let mut inbox = open_inbox(&mut client, 0).await;
    let mut subjects = BTreeSet::new();
    for _ in 0..PAIR_MESSAGES {
        let message = next_entry(&mut inbox).await.message.expect("message");
        client
            .acknowledge_message(AcknowledgeMessageRequest {
                message_id: message.message_id.clone(),
                state: DeliveryState::Received as i32,
            })
            .await
            .expect("acknowledge");
        subjects.insert(message.subject);
    }
    subjects
}

/// For each stalled agency, how many backlog messages were handed to its stream (DELIVERED or
/// later), from the senders' delivery status.
async fn delivered_counts(
    senders: &[ExchangeServiceClient<Channel>],
    sent: &[(usize, String)],
    stalled: &[String],
) -> Vec<usize> {
    let states: Vec<Vec<(String, i32)>> = stream::iter(sent)
        .map(|(sender, message_id)| {
            let mut client = senders[*sender].clone();
            async move { delivery_states(&mut client, message_id).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    stalled
        .iter()
        .map(|agency| {
            states
                .iter()
                .flatten()
                .filter(|(id, state)| id == agency && *state >= DeliveryState::Delivered as i32)
                .count()
        })
        .collect()
}

/// Idle and stalled inbox streams hold bounded memory each and never block senders or other
/// readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalled_inbox_streams_hold_bounded_memory_and_never_block_senders() {
    let scale = Scale::from_env();
    let started = Instant::now();
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    pki.write_server_files(dir.path());
    let server = ServerProcess::start(dir.path());
    let (addr, pid) = (server.addr, server.pid());

    let names = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
    };
    let idle_ids = names("ES-IDLE", scale.idle_agencies());
    let stalled_ids = names("CO-STALLED", scale.stalled);
    let bulk_ids = names("FR-BULK", BULK_SENDERS);
    let left_ids = names("BE-PAIR", PAIRS);
    let right_ids = names("MX-PAIR", PAIRS);
    for (ids, region) in [
        (&idle_ids, Region::Eu),
        (&stalled_ids, Region::Celac),
        (&bulk_ids, Region::Eu),
        (&left_ids, Region::Eu),
        (&right_ids, Region::Celac),
    ] {
        register_all(&pki, addr, ids, region).await;
    }
    let registered = memory(pid);
    let idle_clients = clients(&pki, addr, &idle_ids).await;
    let stalled_clients = clients(&pki, addr, &stalled_ids).await;
    let bulk_clients = clients(&pki, addr, &bulk_ids).await;
    let left_clients = clients(&pki, addr, &left_ids).await;
    let right_clients = clients(&pki, addr, &right_ids).await;
    let connected = memory(pid);

    // 1. Idle streams, up to the per-agency limit on each idle agency's connection.
    let mut idle_streams: Vec<(usize, Streaming<StreamInboxResponse>)> = Vec::new();
    let per_agency: Vec<usize> = (0..idle_ids.len())
        .map(|i| {
            (scale.idle - i * DEFAULT_INBOX_STREAMS_PER_AGENCY)
                .min(DEFAULT_INBOX_STREAMS_PER_AGENCY)
        })
        .collect();
    let opened = join_all(idle_clients.iter().zip(&per_agency).enumerate().map(
        |(agency, (client, &n))| {
            let mut client = client.clone();
            async move {
                let mut streams = Vec::with_capacity(n);
                for _ in 0..n {
                    streams.push((agency, open_inbox(&mut client, 0).await));
                }
                streams
            }
        },
    ))
    .await;
    idle_streams.extend(opened.into_iter().flatten());
    assert_eq!(idle_streams.len(), scale.idle);
    let idle = memory(pid);

    // 2. Stalled readers: the response is taken, its messages never are.
    let mut stalled_streams = Vec::new();
    for client in &stalled_clients {
        let mut client = client.clone();
        let response = tokio::time::timeout(WAIT, client.stream_inbox(inbox_request(0)))
            .await
            .expect("StreamInbox did not answer in time")
            .expect("StreamInbox refused");
        stalled_streams.push(response.into_inner());
    }

    // 3. The backlog of the stalled agencies, sent while the pairs exchange normally.
    let load_started = Instant::now();
    let stalled_refs: Vec<&str> = stalled_ids.iter().map(String::as_str).collect();
    let groups: Vec<Vec<&str>> = stalled_refs
        .chunks(DEFAULT_MAX_RECIPIENTS)
        .map(<[&str]>::to_vec)
        .collect();
    let bulk_sends = join_all(bulk_clients.iter().enumerate().map(|(sender, client)| {
        let mut client = client.clone();
        let (groups, bytes, backlog) = (&groups, scale.message_bytes, scale.backlog);
        async move {
            let mut sent = Vec::new();
            for n in (sender..backlog).step_by(BULK_SENDERS) {
                for (g, group) in groups.iter().enumerate() {
                    sent.push((sender, send(&mut client, bulk(n, g, group, bytes)).await));
                }
            }
            sent
        }
    }));
    let mut pair_tasks = Vec::new();
    for i in 0..PAIRS {
        let (left, right) = (&left_ids[i], &right_ids[i]);
        pair_tasks.push(tokio::spawn(send_to_partner(
            left_clients[i].clone(),
            left.clone(),
            right.clone(),
        )));
        pair_tasks.push(tokio::spawn(send_to_partner(
            right_clients[i].clone(),
            right.clone(),
            left.clone(),
        )));
    }
    let readers: Vec<_> = left_clients
        .iter()
        .chain(&right_clients)
        .map(|client| tokio::spawn(read_and_acknowledge(client.clone())))
        .collect();
    let bulk_sent: Vec<(usize, String)> = bulk_sends.await.into_iter().flatten().collect();
    let bulk_done = load_started.elapsed();
    for task in pair_tasks {
        task.await.expect("pair sender");
    }
    let received = join_all(readers).await;
    for (reader, subjects) in left_ids.iter().chain(&right_ids).zip(received) {
        let subjects = subjects.expect("pair reader");
        let partner = match left_ids.iter().position(|id| id == reader) {
            Some(i) => &right_ids[i],
            None => &left_ids[right_ids.iter().position(|id| id == reader).expect("pair")],
        };
        let expected: BTreeSet<String> = (0..PAIR_MESSAGES)
            .map(|n| format!("{partner}-to-{reader}-{n}"))
            .collect();
        assert_eq!(subjects, expected, "what {reader} received");
    }
    assert_eq!(bulk_sent.len(), scale.backlog * groups.len());

    // 4. The stalled streams have taken what they can: at least a client window's worth each,
    //    and no more since the last look (the delivered marks are written behind the streams).
    //    An encoded response is the attachment and well under 1 KiB of the rest.
    let encoded = scale.message_bytes as u64 + KIB;
    let lower = CLIENT_STREAM_WINDOW.div_ceil(encoded) as usize;
    let mut previous = Vec::new();
    let awaited =
        format!("the stalled streams to settle after a client window's worth ({lower} messages)");
    let delivered = eventually_within(&awaited, 3 * WAIT, Duration::from_millis(200), async || {
        let counts = delivered_counts(&bulk_clients, &bulk_sent, &stalled_ids).await;
        if counts.iter().all(|&n| n >= lower) && counts == previous {
            Ok(counts)
        } else {
            previous = counts.clone();
            Err(counts)
        }
    })
    .await;
    let loaded = memory(pid);

    // 5. Memory. Idle streams cost little each; a stalled stream holds at most its bound
    //    whatever its backlog. Growth is counted from the connected server, so that the
    //    connections' own buffers are not charged to the streams.
    let stalled_bound = stalled_stream_bound(encoded);
    let bound = scale.idle as u64 * IDLE_STREAM_BUDGET
        + scale.stalled as u64 * stalled_bound
        + OTHER_BUDGET;
    let buffered_backlog = (scale.stalled * scale.backlog) as u64 * encoded;
    println!(
        "streams: {} idle on {} agencies, {} stalled with a backlog of {} x {} KiB; \
         backlog sent in {bulk_done:?}",
        scale.idle,
        idle_ids.len(),
        scale.stalled,
        scale.backlog,
        scale.message_bytes as u64 / KIB
    );
    println!(
        "streams: RSS with the agencies registered {}, connected {}, with idle streams {} \
         ({} KiB per idle stream), loaded {} (peak {}); bound on growth {}, the backlog if \
         buffered {}; handed to each stalled stream {delivered:?} of {}",
        mib(registered.rss),
        mib(connected.rss),
        mib(idle.rss),
        idle.rss.saturating_sub(connected.rss) / scale.idle as u64 / KIB,
        mib(loaded.rss),
        mib(loaded.hwm),
        mib(bound),
        mib(buffered_backlog),
        scale.backlog
    );
    assert!(
        bound * 4 < buffered_backlog,
        "the bound ({}) must be far below the buffered backlog ({}) for this test to tell them apart",
        mib(bound),
        mib(buffered_backlog)
    );
    assert!(
        idle.rss.saturating_sub(connected.rss) <= scale.idle as u64 * IDLE_STREAM_BUDGET,
        "{} idle streams took {}",
        scale.idle,
        mib(idle.rss - connected.rss)
    );
    assert!(
        loaded.rss.saturating_sub(connected.rss) <= bound,
        "resident memory grew by {}, over the bound {}",
        mib(loaded.rss - connected.rss),
        mib(bound)
    );
    assert!(
        loaded.hwm.saturating_sub(connected.rss) <= bound,
        "peak resident memory grew by {}, over the bound {}",
        mib(loaded.hwm - connected.rss),
        mib(bound)
    );
    let upper = stalled_stream_messages(encoded);
    for (agency, n) in stalled_ids.iter().zip(&delivered) {
        assert!(
            *n <= upper,
            "{agency}'s stalled stream was handed {n} messages; at most {upper} fit"
        );
    }

    // 6. The idle streams are alive: each receives what is sent to its agency now.
    let idle_refs: Vec<&str> = idle_ids.iter().map(String::as_str).collect();
    let mut last_call = left_clients[0].clone();
    for (g, group) in idle_refs.chunks(DEFAULT_MAX_RECIPIENTS).enumerate() {
        let id = format!("to-idle-{g}");
        send(&mut last_call, named(&id, group, "Still there?")).await;
    }
    let woken = join_all(
        idle_streams
            .iter_mut()
            .map(|(agency, stream)| async move { (*agency, next_entry(stream).await) }),
    )
    .await;
    for (agency, entry) in woken {
        let message = entry.message.expect("message");
        let group = agency / DEFAULT_MAX_RECIPIENTS;
        assert_eq!(entry.sequence, 1, "{}", idle_ids[agency]);
        assert_eq!(message.subject, format!("to-idle-{group}"));
    }

    // 7. A stalled reader that resumes reading gets its whole backlog, in order, nothing lost.
    let mut resumed = stalled_streams.swap_remove(0);
    let mut subjects = BTreeSet::new();
    for sequence in 1..=scale.backlog as u64 {
        let entry = next_entry(&mut resumed).await;
        assert_eq!(entry.sequence, sequence);
        let message = entry.message.expect("message");
        assert_eq!(message.attachments[0].data.len(), scale.message_bytes);
        subjects.insert(message.subject);
    }
    let expected: BTreeSet<String> = (0..scale.backlog).map(|n| format!("bulk-{n}")).collect();
    assert_eq!(subjects, expected);
    println!("streams: done in {:?}", started.elapsed());
}
