//! Crash soak: the `puente` binary is killed with SIGKILL at a random moment while 16 to 32
//! clients send, restarted on the same data directory and checked, many times in a row. After
//! every restart:
//!
//! 1. every acknowledged send is stored exactly once: its sender reads it back by id, and each
//!    of its recipients' inboxes holds it once;
//! 2. each inbox is numbered 1..=n without gaps or repeats, and what it held after the previous
//!    restart is still there, at the same sequences;
//! 3. retrying the sends that were in flight at the kill (same `client_message_id`, same
//!    content) succeeds and returns the stored id of those that had been stored, and retrying
//!    acknowledged sends returns their original id and stores nothing new;
//! 4. the audit log's signed checkpoint extends the one verified before the kill.
//!
//! Most kills come 50 to 400 ms into the load; every fourth (rounds 4, 8, 12...) waits until the
//! writer has moved to a new journal file, to land while sled is being flushed in the background
//! (the round's summary line shows whether it did).
//!
//! `PUENTE_SOAK_KILLS` sets the number of kills (default 5); `PUENTE_SOAK_SEED` replays the
//! random choices (client counts, kill delays, samples) of an earlier run, whose seed is printed
//! first. Timing still differs between runs. See RELIABILITY.md.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    agency_spiffe, auditor_spiffe, connect, is_transport_failure, register_agency, text_message,
    verify_checkpoint, ServerProcess, TestPki, WAIT,
};
use futures::stream::{self, StreamExt};
use puente::audit::merkle::{verify_consistency, Hash};
use puente::audit::note::Checkpoint;
use puente::pb::v1::audit_service_client::AuditServiceClient;
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{
    message, GetCheckpointRequest, GetConsistencyProofRequest, GetLogInfoRequest,
    GetMessageRequest, Region, SendMessageRequest, StreamInboxRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Several sending agencies, so that no one caller reaches its request rate.
const SENDERS: [&str; 6] = ["ES-CNP", "BE-FPJ", "FR-OCLCO", "PT-PJ", "DE-BKA", "IT-DCSA"];
const RECIPIENTS: [&str; 2] = ["CO-DIJIN", "MX-FGR"];
/// Kills when `PUENTE_SOAK_KILLS` is not set: short enough for CI in a debug build.
const DEFAULT_KILLS: u64 = 5;
/// Concurrent senders of a round, each sending one message at a time.
const CLIENTS: (u64, u64) = (16, 32);
/// Milliseconds of load before the kill.
const KILL_DELAY_MS: (u64, u64) = (50, 400);
/// Every this many rounds, the kill waits until the writer has moved to a new journal file, to
/// land while sled is flushed in the background (the older file is removed only after that
/// flush; the summary counts the kills that did).
const FLUSH_ROUND_EVERY: u32 = 4;
/// Longest wait for that moment, after which the kill happens anyway (and the summary says so).
const FLUSH_WAIT: Duration = Duration::from_secs(60);
/// Microseconds between seeing that moment and the kill: the flush took from 0.3 to 10 ms on the
/// development VM (debug build), so the journal directory is polled without pause.
const FLUSH_KILL_DELAY_US: (u64, u64) = (0, 250);
/// Size of each message's text.
const TEXT_BYTES: usize = 1024;
/// Acknowledged sends retried after each restart.
const RESEND_SAMPLE: usize = 32;
/// Sends acknowledged in earlier rounds read back by id after each restart, besides every send
/// acknowledged in the round just ended (all are read back once more at the end).
const READ_BACK_SAMPLE: usize = 256;
/// GetMessage calls in flight while reading back.
const READ_CONCURRENCY: usize = 32;
/// Violations printed when the soak fails (all are counted).
const VIOLATIONS_SHOWN: usize = 40;

// === Random choices ===

/// xorshift64* seeded through one splitmix64 step, so that every seed (0 included) gives a
/// usable state. Not for anything but choosing test parameters.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(z.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi` (the modulo bias is irrelevant here).
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Up to `n` distinct items of `items`.
    fn sample<'a, T>(&mut self, items: &[&'a T], n: usize) -> Vec<&'a T> {
        if items.len() <= n {
            return items.to_vec();
        }
        let mut chosen = HashSet::new();
        while chosen.len() < n {
            chosen.insert((self.next() % items.len() as u64) as usize);
        }
        let mut chosen: Vec<usize> = chosen.into_iter().collect();
        chosen.sort_unstable();
        chosen.into_iter().map(|i| items[i]).collect()
    }
}

/// A positive integer from the environment, or `None` when unset; panics on anything else, so a
/// typo never turns the soak into something else silently.
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")))
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

// === The sends ===

/// One send: the `n`th message of sender task `task` in round `round`. Everything about the
/// request follows from it, so the ledger keeps only keys and answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    round: u32,
    task: u32,
    n: u32,
}

impl Key {
    /// Also the subject, so that an inbox entry names the request it came from.
    fn client_message_id(self) -> String {
        format!("soak-r{}-c{}-m{}", self.round, self.task, self.n)
    }

    fn sender(self) -> &'static str {
        SENDERS[self.task as usize % SENDERS.len()]
    }

    fn recipients(self) -> Vec<&'static str> {
        if self.n % 3 == 0 {
            RECIPIENTS.to_vec()
        } else {
            vec![RECIPIENTS[(self.task + self.n) as usize % RECIPIENTS.len()]]
        }
    }

    fn text(self) -> String {
        let mut text = format!("{}: ", self.client_message_id());
        while text.len() < TEXT_BYTES {
            text.push_str("Serial BXR-4471 on a pistol found in a container from Cartagena. ");
        }
        text.truncate(TEXT_BYTES);
        text
    }

    fn request(self) -> SendMessageRequest {
        let id = self.client_message_id();
        let mut request = text_message(&id, &self.recipients(), &self.text());
        request.subject = id;
        request
    }
}

/// A send whose answer was OK.
struct Acked {
    key: Key,
    message_id: String,
    audit_index: Option<u64>,
    /// The round whose kill followed the answer.
    round: u32,
}

/// What one sender task saw until its first failure (the kill).
struct SenderReport {
    acked: Vec<(Key, String, Option<u64>)>,
    /// The send that failed, how, and when.
    failed: (Key, Status, Instant),
    /// RESOURCE_EXHAUSTED answers (retried after a pause).
    throttled: u64,
}

/// Sends one message after another until a send fails other than by being throttled.
async fn send_until_failure(
    mut client: ExchangeServiceClient<Channel>,
    round: u32,
    task: u32,
) -> SenderReport {
    let mut acked = Vec::new();
    let mut throttled = 0;
    let mut n = 0;
    loop {
        let key = Key { round, task, n };
        let request = key.request();
        loop {
            match client.send_message(request.clone()).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    acked.push((key, answer.message_id, answer.audit_index));
                    break;
                }
                Err(status) if status.code() == Code::ResourceExhausted => {
                    throttled += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(status) => {
                    return SenderReport {
                        acked,
                        failed: (key, status, Instant::now()),
                        throttled,
                    }
                }
            }
        }
        n += 1;
    }
}

/// The server on the files of `dir`, with the per-caller budget of audited calls lifted: the
/// soak reads back every acknowledged message, many more reads than one agency's budget.
fn start_server(dir: &std::path::Path) -> ServerProcess {
    let config = dir.join("soak.toml");
    std::fs::write(
        &config,
        "[limits]\naudited_calls_per_minute = 1000000\naudited_call_burst = 1000000\n",
    )
    .expect("write the soak's config file");
    let mut args = ServerProcess::file_args(dir);
    args.extend(["--config".into(), config.into_os_string()]);
    ServerProcess::start_with(args)
}

/// Calls `call` again while the server answers RESOURCE_EXHAUSTED: the checks read faster than
/// the per-caller request rate allows.
async fn unthrottled<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    for _ in 0..2000 {
        match call().await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
    panic!("still RESOURCE_EXHAUSTED after 2000 attempts")
}

// === Clients ===

/// One certificate per identity, issued once and reused across restarts.
struct Identities {
    ca_pem: String,
    certs: HashMap<String, (String, String)>,
}

impl Identities {
    fn new(pki: &TestPki) -> Identities {
        let spiffe_ids = SENDERS
            .iter()
            .chain(&RECIPIENTS)
            .map(|id| agency_spiffe(id))
            .chain([auditor_spiffe("ana")]);
        Identities {
            ca_pem: pki.ca_pem.clone(),
            certs: spiffe_ids.map(|id| (id.clone(), pki.issue(&id))).collect(),
        }
    }

    async fn channel(&self, spiffe_id: &str, addr: SocketAddr) -> Channel {
        let (cert, key) = &self.certs[spiffe_id];
        connect(cert, key, &self.ca_pem, addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect as {spiffe_id}: {e:?}"))
    }

    async fn agency(&self, id: &str, addr: SocketAddr) -> ExchangeServiceClient<Channel> {
        ExchangeServiceClient::new(self.channel(&agency_spiffe(id), addr).await)
    }

    async fn auditor(&self, addr: SocketAddr) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel(&auditor_spiffe("ana"), addr).await)
    }
}

// === Checks ===

/// Invariant violations of one round; the round fails with all of them listed.
struct Violations {
    seed: u64,
    round: String,
    found: Vec<String>,
}

impl Violations {
    fn new(seed: u64, round: String) -> Violations {
        Violations {
            seed,
            round,
            found: Vec::new(),
        }
    }

    fn add(&mut self, invariant: &str, what: String) {
        self.found.push(format!("invariant {invariant}: {what}"));
    }

    #[track_caller]
    fn assert_none(&self) {
        if self.found.is_empty() {
            return;
        }
        let shown: Vec<&str> = self
            .found
            .iter()
            .take(VIOLATIONS_SHOWN)
            .map(String::as_str)
            .collect();
        panic!(
            "crash soak failed at {} (seed {seed}, replay with PUENTE_SOAK_SEED={seed}): {} \
             violation(s), the first {}:\n  {}",
            self.round,
            self.found.len(),
            shown.len(),
            shown.join("\n  "),
            seed = self.seed,
        );
    }
}

/// The log's verifier key and its latest checkpoint, whose signature is checked with that key.
async fn signed_checkpoint(client: &mut AuditServiceClient<Channel>) -> (String, Checkpoint) {
    let key = unthrottled(|| {
        let mut client = client.clone();
        async move { client.get_log_info(GetLogInfoRequest {}).await }
    })
    .await
    .expect("GetLogInfo")
    .into_inner()
    .verifier_key;
    let note = unthrottled(|| {
        let mut client = client.clone();
        async move { client.get_checkpoint(GetCheckpointRequest {}).await }
    })
    .await
    .expect("GetCheckpoint")
    .into_inner()
    .checkpoint;
    let checkpoint = verify_checkpoint(&key, &note);
    (key, checkpoint)
}

/// Whether `new` extends `old`, by a consistency proof from the server.
async fn check_extends(
    client: &mut AuditServiceClient<Channel>,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Result<(), String> {
    if new.size < old.size {
        return Err(format!(
            "the log shrank from {} to {} entries",
            old.size, new.size
        ));
    }
    let proof: Vec<Hash> = if new.size == old.size {
        Vec::new()
    } else {
        let request = GetConsistencyProofRequest {
            from_size: old.size,
            to_size: new.size,
        };
        unthrottled(|| {
            let mut client = client.clone();
            async move { client.get_consistency_proof(request).await }
        })
        .await
        .map_err(|s| format!("no consistency proof {} → {}: {s:?}", old.size, new.size))?
        .into_inner()
        .hashes
        .into_iter()
        .map(|h| h.try_into().expect("32-byte hash"))
        .collect()
    };
    verify_consistency(old.size, new.size, &proof, &old.root, &new.root).map_err(|e| {
        format!(
            "the checkpoint of size {} does not extend the one of size {}: {e:?}",
            new.size, old.size
        )
    })
}

/// One inbox entry as streamed.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    sequence: u64,
    message_id: String,
    /// The `client_message_id` of the send (see [`Key::client_message_id`]).
    subject: String,
}

/// The caller's inbox after `after`, to its current end.
async fn inbox_after(client: &mut ExchangeServiceClient<Channel>, after: u64) -> Vec<Entry> {
    let mut stream = unthrottled(|| {
        let mut client = client.clone();
        async move {
            client
                .stream_inbox(StreamInboxRequest {
                    after_sequence: after,
                    backlog_only: true,
                })
                .await
        }
    })
    .await
    .expect("StreamInbox")
    .into_inner();
    let mut entries = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("inbox stream stalled")
        .expect("inbox stream failed")
    {
        let message = item.message.expect("inbox entry without a message");
        entries.push(Entry {
            sequence: item.sequence,
            message_id: message.message_id,
            subject: message.subject,
        });
    }
    entries
}

/// Invariant 2 within one snapshot: sequences 1..=n, each message once.
fn check_numbering(recipient: &str, entries: &[Entry], violations: &mut Violations) {
    if let Some((i, entry)) = entries
        .iter()
        .enumerate()
        .find(|(i, entry)| entry.sequence != *i as u64 + 1)
    {
        violations.add(
            "2",
            format!(
                "{recipient}: entry {} of the inbox has sequence {} (message {})",
                i + 1,
                entry.sequence,
                entry.message_id
            ),
        );
    }
    let mut seen = HashMap::new();
    for entry in entries {
        if let Some(first) = seen.insert(&entry.message_id, entry.sequence) {
            violations.add(
                "2",
                format!(
                    "{recipient}: message {} at sequences {first} and {}",
                    entry.message_id, entry.sequence
                ),
            );
        }
    }
}

/// Invariant 1 against the inboxes: every acknowledged send is in each of its recipients'
/// inboxes exactly once, with the id it was acknowledged with, and nothing else is there.
fn check_inboxes(
    inboxes: &BTreeMap<&'static str, Vec<Entry>>,
    acked: &BTreeMap<String, Acked>,
    violations: &mut Violations,
) {
    for (recipient, entries) in inboxes {
        let mut copies: HashMap<&str, Vec<u64>> = HashMap::new();
        for entry in entries {
            copies
                .entry(entry.subject.as_str())
                .or_default()
                .push(entry.sequence);
            match acked.get(&entry.subject) {
                None => violations.add(
                    "1",
                    format!(
                        "{recipient} sequence {}: message {} ({}) was never acknowledged",
                        entry.sequence, entry.message_id, entry.subject
                    ),
                ),
                Some(sent) if sent.message_id != entry.message_id => violations.add(
                    "1",
                    format!(
                        "{recipient} sequence {}: {} is stored as {}, acknowledged as {}",
                        entry.sequence, entry.subject, entry.message_id, sent.message_id
                    ),
                ),
                Some(sent) if !sent.key.recipients().contains(recipient) => violations.add(
                    "1",
                    format!(
                        "{recipient} sequence {}: {} was not addressed to it",
                        entry.sequence, entry.subject
                    ),
                ),
                Some(_) => {}
            }
        }
        for (subject, sequences) in &copies {
            if sequences.len() > 1 {
                violations.add(
                    "1",
                    format!("{recipient}: {subject} is stored at sequences {sequences:?}"),
                );
            }
        }
        for (client_message_id, sent) in acked {
            if sent.key.recipients().contains(recipient)
                && !copies.contains_key(client_message_id.as_str())
            {
                violations.add(
                    "1",
                    format!(
                        "{recipient}: acknowledged {client_message_id} (message {}, before kill \
                         {}) is missing",
                        sent.message_id, sent.round
                    ),
                );
            }
        }
    }
}

/// Invariant 1 by id: each sender reads back its acknowledged sends, as sent. Returns the
/// violations.
async fn read_back(
    readers: &HashMap<&'static str, ExchangeServiceClient<Channel>>,
    sends: Vec<&Acked>,
) -> Vec<String> {
    stream::iter(sends)
        .map(|sent| {
            let client = readers[sent.key.sender()].clone();
            async move {
                let id = sent.message_id.clone();
                let cmid = sent.key.client_message_id();
                let answer = unthrottled(|| {
                    let mut client = client.clone();
                    let message_id = id.clone();
                    async move { client.get_message(GetMessageRequest { message_id }).await }
                })
                .await;
                let stored = match answer.map(|a| a.into_inner().message) {
                    Ok(Some(stored)) => stored,
                    Ok(None) => return Some(format!("GetMessage of {cmid} ({id}) is empty")),
                    Err(status) => {
                        return Some(format!(
                            "{} cannot read acknowledged {cmid} ({id}): {:?} {}",
                            sent.key.sender(),
                            status.code(),
                            status.message()
                        ))
                    }
                };
                let mut recipients = sent.key.recipients();
                recipients.sort_unstable();
                let mut stored_recipients: Vec<&str> =
                    stored.recipients.iter().map(String::as_str).collect();
                stored_recipients.sort_unstable();
                let same = stored.message_id == id
                    && stored.subject == cmid
                    && stored.sender == sent.key.sender()
                    && stored_recipients == recipients
                    && stored.content == Some(message::Content::Text(sent.key.text()));
                (!same).then(|| format!("{cmid} ({id}) reads back different from what was sent"))
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .filter_map(|violation| async move { violation })
        .collect()
        .await
}

/// The journal files in the data directory: generation, and whether it holds a record (the
/// first 4 bytes, a record's length, are not zero; a prepared file is all zeros).
fn journal_files(dir: &Path) -> Vec<(u64, bool)> {
    let journal = dir.join("data").join("journal");
    let Ok(files) = std::fs::read_dir(&journal) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, bool)> = files
        .filter_map(|file| {
            let name = file.ok()?.file_name();
            let name = name.to_string_lossy();
            let generation = u64::from_str_radix(name.strip_suffix(".journal")?, 16).ok()?;
            let mut length = [0u8; 4];
            // The server may remove the file meanwhile: then it holds nothing any more.
            let has_records = std::fs::File::open(journal.join(&*name))
                .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut length))
                .is_ok()
                && length != [0; 4];
            Some((generation, has_records))
        })
        .collect();
    found.sort_unstable();
    found
}

/// Whether the writer has moved to a new journal file while the one before it is still there:
/// sled is being flushed in the background, and the older file is removed after that.
fn flush_in_progress(files: &[(u64, bool)]) -> bool {
    files.iter().filter(|(_, has_records)| *has_records).count() >= 2
}

/// The generation of the newest journal file holding records: the one being written.
fn newest_with_records(files: &[(u64, bool)]) -> u64 {
    files
        .iter()
        .filter(|(_, has_records)| *has_records)
        .map(|(generation, _)| *generation)
        .max()
        .unwrap_or_default()
}

fn describe_journal(files: &[(u64, bool)]) -> String {
    let with_records = files.iter().filter(|(_, has)| *has).count();
    match files {
        [] => "no journal".to_string(),
        [(only, _)] => format!("1 journal file (generation {only}, {with_records} with records)"),
        [(first, _), .., (last, _)] => format!(
            "{} journal files (generations {first}..={last}, {with_records} with records)",
            files.len()
        ),
    }
}

// === The soak ===

#[derive(Default)]
struct Totals {
    in_flight: usize,
    in_flight_stored: usize,
    resent: usize,
    throttled: u64,
    ready: Vec<Duration>,
    highest_generation: u64,
    /// Kills after which two journal files held records: sled was being flushed.
    during_flush: usize,
}

/// Acknowledged sends survive repeated kill -9 under load, at random points of the journal and sled
/// flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_sends_survive_repeated_kill_9_under_load() {
    let kills = env_u64("PUENTE_SOAK_KILLS").unwrap_or(DEFAULT_KILLS);
    assert!(kills >= 1, "PUENTE_SOAK_KILLS must be at least 1");
    let seed = env_u64("PUENTE_SOAK_SEED").unwrap_or_else(fresh_seed);
    println!("crash soak: {kills} kills, seed {seed} (replay with PUENTE_SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let pki = TestPki::new();
    let identities = Identities::new(&pki);
    let dir = tempfile::tempdir().expect("temporary directory");
    pki.write_server_files(dir.path());

    let mut server = start_server(dir.path());
    for (id, region) in SENDERS
        .iter()
        .map(|id| (*id, Region::Eu))
        .chain(RECIPIENTS.iter().map(|id| (*id, Region::Celac)))
    {
        register_agency(&pki, server.addr, id, region).await;
    }
    let mut auditor = identities.auditor(server.addr).await;
    let (log_key, mut verified) = signed_checkpoint(&mut auditor).await;

    let mut acked: BTreeMap<String, Acked> = BTreeMap::new();
    let mut inboxes: BTreeMap<&'static str, Vec<Entry>> =
        RECIPIENTS.iter().map(|r| (*r, Vec::new())).collect();
    let mut totals = Totals::default();

    for round in 1..=kills as u32 {
        let mut violations = Violations::new(seed, format!("round {round} of {kills}"));

        // Load, a checkpoint verified under it, then the kill.
        let clients = rng.between(CLIENTS) as u32;
        let delay = Duration::from_millis(rng.between(KILL_DELAY_MS));
        let mut senders = Vec::new();
        for task in 0..clients {
            let sender = Key { round, task, n: 0 }.sender();
            let client = identities.agency(sender, server.addr).await;
            senders.push(tokio::spawn(send_until_failure(client, round, task)));
        }
        tokio::time::sleep(delay).await;
        let (_, before) = signed_checkpoint(&mut auditor).await;
        if let Err(e) = check_extends(&mut auditor, &verified, &before).await {
            violations.add("4", format!("before the kill: {e}"));
        }
        let (moment, killed_at) = if round % FLUSH_ROUND_EVERY == 0 {
            // Polled and killed from a thread of its own: the window is too short for timers.
            let (server, dir) = (server, dir.path().to_path_buf());
            let after = rng.between(FLUSH_KILL_DELAY_US);
            tokio::task::spawn_blocking(move || {
                let waiting = Instant::now();
                let writing = newest_with_records(&journal_files(&dir));
                let moment = loop {
                    // A newer file holds records: the writer has moved on. Usually seen while the
                    // older file is still there (sled being flushed); if this thread was not
                    // scheduled in that window, just after it.
                    if newest_with_records(&journal_files(&dir)) > writing {
                        std::thread::sleep(Duration::from_micros(after));
                        break format!(
                            "{} ms + {} ms until a journal rotation + {after} µs",
                            delay.as_millis(),
                            waiting.elapsed().as_millis()
                        );
                    }
                    if waiting.elapsed() > FLUSH_WAIT {
                        break format!(
                            "{} ms + {} s without a journal rotation",
                            delay.as_millis(),
                            FLUSH_WAIT.as_secs()
                        );
                    }
                    std::thread::yield_now();
                };
                let killed_at = Instant::now();
                server.kill();
                (moment, killed_at)
            })
            .await
            .expect("journal poller")
        } else {
            let killed_at = Instant::now();
            server.kill();
            (format!("{} ms", delay.as_millis()), killed_at)
        };

        let mut in_flight = Vec::new();
        let mut acked_now = 0;
        let mut failures: BTreeMap<String, usize> = BTreeMap::new();
        for sender in senders {
            let report = tokio::time::timeout(WAIT, sender)
                .await
                .expect("a sender did not stop after the kill")
                .expect("sender task panicked");
            totals.throttled += report.throttled;
            acked_now += report.acked.len();
            for (key, message_id, audit_index) in report.acked {
                let sent = Acked {
                    key,
                    message_id,
                    audit_index,
                    round,
                };
                acked.insert(key.client_message_id(), sent);
            }
            let (key, status, at) = report.failed;
            if at < killed_at {
                violations.add(
                    "load",
                    format!(
                        "{} answered {:?} ({}) before the kill",
                        key.client_message_id(),
                        status.code(),
                        status.message()
                    ),
                );
            } else if !is_transport_failure(&status) {
                // Not an invariant, but worth seeing: the kill should surface as a transport error.
                *failures.entry(format!("{:?}", status.code())).or_default() += 1;
            }
            in_flight.push(key);
        }

        // Restart on the same directory; ready once the auditor has a signed checkpoint.
        let journal = journal_files(dir.path());
        totals.highest_generation = totals
            .highest_generation
            .max(journal.last().map_or(0, |(generation, _)| *generation));
        totals.during_flush += usize::from(flush_in_progress(&journal));
        let restarted = Instant::now();
        server = start_server(dir.path());
        auditor = identities.auditor(server.addr).await;
        let (key_after, after) = signed_checkpoint(&mut auditor).await;
        let ready = restarted.elapsed();
        totals.ready.push(ready);
        let checks = Instant::now();

        // 4: the log after the restart extends the checkpoint verified before the kill.
        if key_after != log_key {
            violations.add("4", "the log's verifier key changed".into());
        }
        if let Err(e) = check_extends(&mut auditor, &before, &after).await {
            violations.add("4", format!("across the kill: {e}"));
        }
        if let Some((cmid, index)) = acked
            .iter()
            .filter_map(|(cmid, sent)| Some((cmid, sent.audit_index?)))
            .max_by_key(|(_, index)| *index)
        {
            if index >= after.size {
                violations.add(
                    "4",
                    format!(
                        "{cmid} was acknowledged with audit index {index}, the log now has {} \
                         entries",
                        after.size
                    ),
                );
            }
        }

        // 2: each inbox numbered 1..=n, the previous snapshot a prefix of it.
        let mut readers = HashMap::new();
        for id in SENDERS.iter().chain(&RECIPIENTS) {
            readers.insert(*id, identities.agency(id, server.addr).await);
        }
        let mut stored_before_retries: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut by_subject: HashMap<String, Vec<(&'static str, String)>> = HashMap::new();
        for recipient in RECIPIENTS {
            let client = readers.get_mut(recipient).expect("recipient client");
            let entries = inbox_after(client, 0).await;
            check_numbering(recipient, &entries, &mut violations);
            let previous = &inboxes[recipient];
            if entries.len() < previous.len() {
                violations.add(
                    "2",
                    format!(
                        "{recipient}'s inbox shrank from {} to {} entries",
                        previous.len(),
                        entries.len()
                    ),
                );
            }
            for (old, new) in previous.iter().zip(&entries) {
                if old != new {
                    violations.add(
                        "2",
                        format!(
                            "{recipient} sequence {}: held {} ({}) before, now {} ({}) at \
                             sequence {}",
                            old.sequence,
                            old.message_id,
                            old.subject,
                            new.message_id,
                            new.subject,
                            new.sequence
                        ),
                    );
                }
            }
            for entry in &entries {
                by_subject
                    .entry(entry.subject.clone())
                    .or_default()
                    .push((recipient, entry.message_id.clone()));
            }
            stored_before_retries.insert(recipient, entries.len());
            inboxes.insert(recipient, entries);
        }

        // 3: retries of the sends in flight at the kill, then of a sample of acknowledged ones.
        let mut stored_in_flight = 0;
        let mut retried_now = HashSet::new();
        for key in &in_flight {
            let cmid = key.client_message_id();
            let request = key.request();
            let client = &readers[key.sender()];
            let answer = unthrottled(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.send_message(request).await }
            })
            .await;
            let answer = match answer {
                Ok(answer) => answer.into_inner(),
                Err(status) => {
                    violations.add(
                        "3",
                        format!(
                            "retry of in-flight {cmid} answered {:?} ({})",
                            status.code(),
                            status.message()
                        ),
                    );
                    continue;
                }
            };
            if let Some(stored) = by_subject.get(&cmid) {
                stored_in_flight += 1;
                for (recipient, id) in stored {
                    if *id != answer.message_id {
                        violations.add(
                            "3",
                            format!(
                                "retry of in-flight {cmid} returned {}, but {recipient}'s inbox \
                                 holds it as {id}",
                                answer.message_id
                            ),
                        );
                    }
                }
            }
            retried_now.insert(cmid.clone());
            let sent = Acked {
                key: *key,
                message_id: answer.message_id,
                audit_index: answer.audit_index,
                round,
            };
            acked.insert(cmid, sent);
        }
        let earlier: Vec<&Acked> = acked
            .iter()
            .filter(|(cmid, _)| !retried_now.contains(*cmid))
            .map(|(_, sent)| sent)
            .collect();
        let resend = rng.sample(&earlier, RESEND_SAMPLE);
        for sent in &resend {
            let cmid = sent.key.client_message_id();
            let client = &readers[sent.key.sender()];
            let request = sent.key.request();
            let answer = unthrottled(|| {
                let mut client = client.clone();
                let request = request.clone();
                async move { client.send_message(request).await }
            })
            .await;
            match answer {
                Ok(answer) if answer.get_ref().message_id == sent.message_id => {}
                Ok(answer) => violations.add(
                    "3",
                    format!(
                        "retry of acknowledged {cmid} returned {}, not {}",
                        answer.get_ref().message_id,
                        sent.message_id
                    ),
                ),
                Err(status) => violations.add(
                    "3",
                    format!(
                        "retry of acknowledged {cmid} answered {:?} ({})",
                        status.code(),
                        status.message()
                    ),
                ),
            }
        }
        totals.resent += resend.len();

        // What the retries added: only in-flight sends that had not been stored.
        for recipient in RECIPIENTS {
            let before_retries = stored_before_retries[recipient];
            let client = readers.get_mut(recipient).expect("recipient client");
            let added = inbox_after(client, before_retries as u64).await;
            for entry in &added {
                if !retried_now.contains(&entry.subject) || by_subject.contains_key(&entry.subject)
                {
                    violations.add(
                        "3",
                        format!(
                            "{recipient} sequence {}: a retry stored {} ({}) again",
                            entry.sequence, entry.subject, entry.message_id
                        ),
                    );
                }
            }
            let entries = inboxes.get_mut(recipient).expect("inbox snapshot");
            entries.extend(added);
            check_numbering(recipient, entries, &mut violations);
        }

        // 1: every acknowledged send once in each of its inboxes, and readable by its sender.
        check_inboxes(&inboxes, &acked, &mut violations);
        let (this_round, older): (Vec<&Acked>, Vec<&Acked>) =
            acked.values().partition(|sent| sent.round == round);
        let mut to_read = this_round;
        to_read.extend(rng.sample(&older, READ_BACK_SAMPLE));
        let read = to_read.len();
        for violation in read_back(&readers, to_read).await {
            violations.add("1", violation);
        }
        verified = after;

        totals.in_flight += in_flight.len();
        totals.in_flight_stored += stored_in_flight;
        let failures = if failures.is_empty() {
            String::new()
        } else {
            format!(", kill seen by senders as {failures:?}")
        };
        println!(
            "round {round}/{kills}: {clients} senders killed after {moment}; acked {acked_now}, \
             in flight {} ({stored_in_flight} stored before the kill, all retried){failures}; \
             acked so far {}; restart on {}: ready in {} ms; log {} entries; checked {} inbox \
             entries, read {read} back, {} resent, in {} ms",
            in_flight.len(),
            acked.len(),
            describe_journal(&journal),
            ready.as_millis(),
            verified.size,
            inboxes.values().map(Vec::len).sum::<usize>(),
            resend.len(),
            checks.elapsed().as_millis(),
        );
        violations.assert_none();
    }

    // At the end: every acknowledged send read back, the log covers them, and a clean stop
    // leaves no journal and loses nothing.
    let mut violations = Violations::new(seed, "the end".into());
    let mut readers = HashMap::new();
    for id in SENDERS {
        readers.insert(id, identities.agency(id, server.addr).await);
    }
    for violation in read_back(&readers, acked.values().collect()).await {
        violations.add("1", violation);
    }
    let (_, last) = signed_checkpoint(&mut auditor).await;
    if last.size < acked.len() as u64 {
        violations.add(
            "4",
            format!(
                "the log has {} entries for {} acknowledged sends",
                last.size,
                acked.len()
            ),
        );
    }
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "puente serve exited with {status}");
    let journal = journal_files(dir.path());
    if !journal.is_empty() {
        violations.add(
            "clean stop",
            format!("SIGTERM left {}", describe_journal(&journal)),
        );
    }
    let server = start_server(dir.path());
    let mut auditor = identities.auditor(server.addr).await;
    let (_, after_stop) = signed_checkpoint(&mut auditor).await;
    if let Err(e) = check_extends(&mut auditor, &last, &after_stop).await {
        violations.add("4", format!("across the clean stop: {e}"));
    }
    for recipient in RECIPIENTS {
        let mut client = identities.agency(recipient, server.addr).await;
        let entries = inbox_after(&mut client, 0).await;
        if entries != inboxes[recipient] {
            violations.add(
                "2",
                format!(
                    "{recipient}'s inbox changed across the clean stop: {} entries before, {} \
                     after",
                    inboxes[recipient].len(),
                    entries.len()
                ),
            );
        }
    }
    violations.assert_none();

    let mut ready = totals.ready.clone();
    ready.sort_unstable();
    println!(
        "crash soak passed: seed {seed}, {kills} kills, {} sends acknowledged (every one read \
         back), {} in flight at the kills ({} of them stored before the kill, all retried \
         without duplicates), {} acknowledged sends resent, {} throttled answers, {} kills \
         during a background sled flush, highest journal generation {}, restart to ready median {} ms / max {} ms, log {} entries; \
         {:.1} s in all",
        acked.len(),
        totals.in_flight,
        totals.in_flight_stored,
        totals.resent,
        totals.throttled,
        totals.during_flush,
        totals.highest_generation,
        ready[ready.len() / 2].as_millis(),
        ready.last().map_or(0, Duration::as_millis),
        after_stop.size,
        started.elapsed().as_secs_f64(),
    );
}
