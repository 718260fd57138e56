//! `amqp-peer`: RabbitMQ's side of `benches/peers.sh`, measured the way `puente bench` measures
//! Puente.
//!
//! `amqp-peer run` publishes 1 KiB persistent messages to a (quorum) queue over AMQPS with a
//! client certificate, from N publishers in closed loops: each has its own connection and
//! channel in confirm mode and waits for the broker's confirm of a message before it publishes
//! the next, as `puente bench`'s senders wait for their durable acceptance. Optionally
//! consumers (own connections) acknowledge every message. It prints the confirmed rate,
//! publish→confirm p50/p99/p99.9 and, with consumers, publish→delivery percentiles.
//!
//! `amqp-peer table` prints one table from the JSON reports of `amqp-peer run --json` and
//! `puente bench --json`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

const USAGE: &str = "\
usage:
  amqp-peer run --ca CA.pem --cert CLIENT.pem --key CLIENT.key [options]
      --uri URI          default amqps://localhost:5671/%2f?auth_mechanism=external
      --queue NAME       default peers (declared durable, x-queue-type=quorum, then purged)
      --classic          declare a classic durable queue instead of a quorum queue
      --publishers N     default 32; each its own connection and channel, in confirm mode
      --consumers N      default 0; each its own connection, acknowledging every message
      --messages M       default 20000, shared among the publishers
      --size BYTES       default 1024 (the publish instant, then padding)
      --prefetch N       default 256 (each consumer's basic.qos)
      --timeout SECS     default 300: the whole run, connections included
      --json             one JSON object instead of text
  amqp-peer table [--reference LABEL] [--pair LABEL=OTHER]... LABEL=REPORT.json...
      One table from `amqp-peer run --json` and `puente bench --json` reports; the ratio
      column is each row's rate over the reference row's (default: the first row).
      --pair LABEL=OTHER  also say LABEL's rate over OTHER's in LABEL's note (like for like)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("run") => run_command(&args[1..]),
        Some("table") => table_command(&args[1..]),
        Some("-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("expected a command\n{USAGE}").into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("amqp-peer: {error}");
            ExitCode::FAILURE
        }
    }
}

// === run ===

struct Options {
    uri: String,
    ca: String,
    cert: String,
    key: String,
    queue: String,
    quorum: bool,
    publishers: usize,
    consumers: usize,
    messages: u64,
    size: usize,
    prefetch: u16,
    timeout: Duration,
    json: bool,
}

fn parse_run(args: &[String]) -> Result<Options> {
    let mut options = Options {
        uri: "amqps://localhost:5671/%2f?auth_mechanism=external".into(),
        ca: String::new(),
        cert: String::new(),
        key: String::new(),
        queue: "peers".into(),
        quorum: true,
        publishers: 32,
        consumers: 0,
        messages: 20_000,
        size: 1024,
        prefetch: 256,
        timeout: Duration::from_secs(300),
        json: false,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| Error::from(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--uri" => options.uri = value()?,
            "--ca" => options.ca = value()?,
            "--cert" => options.cert = value()?,
            "--key" => options.key = value()?,
            "--queue" => options.queue = value()?,
            "--classic" => options.quorum = false,
            "--publishers" => options.publishers = value()?.parse()?,
            "--consumers" => options.consumers = value()?.parse()?,
            "--messages" => options.messages = value()?.parse()?,
            "--size" => options.size = value()?.parse()?,
            "--prefetch" => options.prefetch = value()?.parse()?,
            "--timeout" => options.timeout = Duration::from_secs(value()?.parse()?),
            "--json" => options.json = true,
            other => return Err(format!("unknown flag {other}\n{USAGE}").into()),
        }
    }
    if options.ca.is_empty() || options.cert.is_empty() || options.key.is_empty() {
        return Err("--ca, --cert and --key are required (mutual TLS)".into());
    }
    if options.publishers == 0 || options.messages == 0 {
        return Err("--publishers and --messages must be at least 1".into());
    }
    if options.size < 8 {
        return Err("--size must be at least 8 (the publish instant)".into());
    }
    Ok(options)
}

fn run_command(args: &[String]) -> Result<()> {
    let options = parse_run(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        tokio::time::timeout(options.timeout, run(&options))
            .await
            .map_err(|_| Error::from(format!("the run took longer than {:?}", options.timeout)))?
    })?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_run(&report);
    }
    Ok(())
}

fn tls(options: &Options) -> Result<OwnedTLSConfig> {
    let read = |path: &str| std::fs::read(path).map_err(|e| Error::from(format!("{path}: {e}")));
    Ok(OwnedTLSConfig {
        identity: Some(OwnedIdentity::PKCS8 {
            pem: read(&options.cert)?,
            key: read(&options.key)?,
        }),
        cert_chain: Some(String::from_utf8(read(&options.ca)?)?),
    })
}

async fn connect(options: &Options, tls: &OwnedTLSConfig) -> Result<Connection> {
    let connection = Connection::connect_with_config(
        &options.uri,
        ConnectionProperties::default(),
        OwnedTLSConfig {
            identity: tls.identity.as_ref().map(|identity| match identity {
                OwnedIdentity::PKCS8 { pem, key } => OwnedIdentity::PKCS8 {
                    pem: pem.clone(),
                    key: key.clone(),
                },
                OwnedIdentity::PKCS12 { der, password } => OwnedIdentity::PKCS12 {
                    der: der.clone(),
                    password: password.clone(),
                },
            }),
            cert_chain: tls.cert_chain.clone(),
        },
        lapin::runtime::default_runtime()?,
    )
    .await
    .map_err(|e| Error::from(format!("cannot connect to {}: {e}", options.uri)))?;
    Ok(connection)
}

/// Nearest-rank percentiles in milliseconds, as `puente bench` computes them.
fn percentiles(samples: &mut [Duration]) -> Value {
    samples.sort_unstable();
    let at = |p: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = (p * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e3
    };
    json!({ "p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999) })
}

async fn run(options: &Options) -> Result<Value> {
    let tls = tls(options)?;

    // Declare (idempotent) and empty the queue on a connection of its own.
    let admin = connect(options, &tls).await?;
    let channel = admin.create_channel().await?;
    let mut arguments = FieldTable::default();
    let queue_type = if options.quorum { "quorum" } else { "classic" };
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    channel
        .queue_declare(
            options.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|e| Error::from(format!("cannot declare the {queue_type} queue: {e}")))?;
    let purged = channel
        .queue_purge(options.queue.as_str().into(), QueuePurgeOptions::default())
        .await?;
    if purged > 0 {
        eprintln!(
            "amqp-peer: purged {purged} messages left in {}",
            options.queue
        );
    }

    let base = Instant::now();
    let target = options.messages;
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);

    // Consumers first, so that they are subscribed before the first publish.
    let mut consumer_connections = Vec::new();
    let mut consumers = Vec::new();
    for i in 0..options.consumers {
        let connection = connect(options, &tls).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                options.queue.as_str().into(),
                format!("amqp-peer-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let received = Arc::clone(&received);
        let done_tx = Arc::clone(&done_tx);
        let mut done_rx = done_rx.clone();
        consumers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                if *done_rx.borrow() {
                    break;
                }
                let next = tokio::select! {
                    next = consumer.next() => next,
                    _ = done_rx.changed() => break,
                };
                let delivery = match next {
                    Some(delivery) => delivery?,
                    None => return Err(Error::from("a consumer was cancelled")),
                };
                let arrived = base.elapsed();
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&delivery.data[..8]);
                let sent = Duration::from_micros(u64::from_le_bytes(stamp));
                latencies.push(arrived.saturating_sub(sent));
                delivery.ack(BasicAckOptions::default()).await?;
                if received.fetch_add(1, Ordering::SeqCst) + 1 >= target {
                    done_tx.send_replace(true);
                    break;
                }
            }
            Ok::<_, Error>(latencies)
        }));
        consumer_connections.push(connection);
    }

    // Publishers: every connection and channel opened before the clock starts.
    let mut publisher_channels = Vec::new();
    let mut publisher_connections = Vec::new();
    for _ in 0..options.publishers {
        let connection = connect(options, &tls).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publisher_channels.push(channel);
        publisher_connections.push(connection);
    }
    let tickets = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut publishers = Vec::new();
    for channel in publisher_channels {
        let tickets = Arc::clone(&tickets);
        let queue = options.queue.clone();
        let size = options.size;
        publishers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut payload = vec![b'x'; size];
            while tickets.fetch_add(1, Ordering::SeqCst) < target {
                let sent = Instant::now();
                payload[..8]
                    .copy_from_slice(&(sent.duration_since(base).as_micros() as u64).to_le_bytes());
                let confirmation = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        // 2: persistent (quorum queues store every message anyway).
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                match confirmation {
                    Confirmation::Ack(_) => {}
                    other => {
                        return Err(Error::from(format!(
                            "a publish was not confirmed: {other:?}"
                        )))
                    }
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut confirm = Vec::new();
    for publisher in publishers {
        confirm.extend(publisher.await??);
    }
    let elapsed = started.elapsed();
    let mut delivery = Vec::new();
    for consumer in consumers {
        delivery.extend(consumer.await??);
    }

    for connection in publisher_connections
        .iter()
        .chain(&consumer_connections)
        .chain(std::iter::once(&admin))
    {
        let _ = connection.close(200, "done".into()).await;
    }

    let messages = confirm.len() as u64;
    Ok(json!({
        "broker": "rabbitmq",
        "queue_type": queue_type,
        "payload_bytes": options.size,
        "publishers": options.publishers,
        "consumers": options.consumers,
        "messages": messages,
        "seconds": elapsed.as_secs_f64(),
        "per_second": messages as f64 / elapsed.as_secs_f64(),
        "publish_to_confirm": percentiles(&mut confirm),
        "publish_to_delivery": if options.consumers > 0 {
            percentiles(&mut delivery)
        } else {
            Value::Null
        },
    }))
}

fn print_run(report: &Value) {
    let ms = |section: &str, p: &str| report[section][p].as_f64().unwrap_or(0.0);
    println!(
        "RabbitMQ {} queue, {} publishers, {} consumers, {} x {} B persistent, publisher confirms",
        report["queue_type"].as_str().unwrap_or("?"),
        report["publishers"],
        report["consumers"],
        report["messages"],
        report["payload_bytes"],
    );
    println!(
        "  confirmed:        {:.0} msg/s ({} in {:.2} s)",
        report["per_second"].as_f64().unwrap_or(0.0),
        report["messages"],
        report["seconds"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  publish→confirm:  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
        ms("publish_to_confirm", "p50_ms"),
        ms("publish_to_confirm", "p99_ms"),
        ms("publish_to_confirm", "p999_ms"),
    );
    if !report["publish_to_delivery"].is_null() {
        println!(
            "  publish→delivery: p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
            ms("publish_to_delivery", "p50_ms"),
            ms("publish_to_delivery", "p99_ms"),
            ms("publish_to_delivery", "p999_ms"),
        );
    }
}

// === table ===

/// One row: rate, ack p50/p99 and delivery p99 (ms) from either kind of report.
struct Row {
    label: String,
    per_second: f64,
    ack_p50: f64,
    ack_p99: f64,
    delivery_p99: Option<f64>,
    note: String,
}

fn row(label: &str, report: &Value) -> Result<Row> {
    let number = |value: &Value| {
        value
            .as_f64()
            .ok_or_else(|| Error::from(format!("{label}: a figure is missing")))
    };
    if let Some(durable) = report.get("durable").filter(|d| !d.is_null()) {
        // `puente bench --json`
        let mut notes = Vec::new();
        if let (Some(bound), Some(ratio)) = (report.get("bound"), report.get("durable_to_bound")) {
            if !bound.is_null() && !ratio.is_null() {
                notes.push(format!(
                    "{:.3} of its in-run bound ({:.0} msg/s)",
                    number(ratio)?,
                    number(&bound["per_second"])?
                ));
                let fdatasync = report["fdatasync"]["p50_ms"].as_f64();
                if let (1, Some(fdatasync)) = (report["senders"].as_u64().unwrap_or(0), fdatasync) {
                    let target = 2.0 * number(&bound["rtt_p50_ms"])? + fdatasync;
                    notes.push(format!(
                        "p50 = {:.2} × (2 × RTT + fdatasync = {target:.3} ms)",
                        number(&durable["send_to_ack"]["p50_ms"])? / target
                    ));
                }
            }
        }
        let note = notes.join("; ");
        Ok(Row {
            label: label.into(),
            per_second: number(&durable["per_second"])?,
            ack_p50: number(&durable["send_to_ack"]["p50_ms"])?,
            ack_p99: number(&durable["send_to_ack"]["p99_ms"])?,
            delivery_p99: durable["send_to_delivery"]["p99_ms"].as_f64(),
            note,
        })
    } else if report.get("broker").is_some() {
        Ok(Row {
            label: label.into(),
            per_second: number(&report["per_second"])?,
            ack_p50: number(&report["publish_to_confirm"]["p50_ms"])?,
            ack_p99: number(&report["publish_to_confirm"]["p99_ms"])?,
            delivery_p99: report["publish_to_delivery"]["p99_ms"].as_f64(),
            note: String::new(),
        })
    } else {
        Err(format!("{label}: neither an amqp-peer nor a puente bench report").into())
    }
}

fn table_command(args: &[String]) -> Result<()> {
    let mut reference = None;
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut rows = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--reference" {
            reference = Some(args.next().ok_or("--reference needs a label")?.clone());
            continue;
        }
        if arg == "--pair" {
            let pair = args.next().ok_or("--pair needs LABEL=LABEL")?;
            let (row, other) = pair
                .split_once('=')
                .ok_or_else(|| Error::from(format!("expected --pair LABEL=LABEL, not {pair}")))?;
            pairs.push((row.to_string(), other.to_string()));
            continue;
        }
        let (label, path) = arg
            .split_once('=')
            .ok_or_else(|| Error::from(format!("expected LABEL=REPORT.json, not {arg}")))?;
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::from(format!("{path}: {e}")))?;
        let report: Value =
            serde_json::from_str(&text).map_err(|e| Error::from(format!("{path}: {e}")))?;
        rows.push(row(label, &report)?);
    }
    let Some(first) = rows.first() else {
        return Err("no reports".into());
    };
    let reference = match &reference {
        Some(label) => rows
            .iter()
            .find(|row| &row.label == label)
            .ok_or_else(|| Error::from(format!("no row labelled {label}")))?,
        None => first,
    };
    let (reference_label, reference_rate) = (reference.label.clone(), reference.per_second);
    // Like for like: a row's rate over another's, said in its note.
    let mut liked = Vec::new();
    for (label, other) in &pairs {
        let rate = |wanted: &str| {
            rows.iter()
                .find(|row| row.label == wanted)
                .map(|row| row.per_second)
                .ok_or_else(|| Error::from(format!("--pair: no row labelled {wanted}")))
        };
        liked.push((
            label.clone(),
            format!("{:.2} × \"{other}\"", rate(label)? / rate(other)?),
        ));
    }
    for (label, note) in liked {
        if let Some(row) = rows.iter_mut().find(|row| row.label == label) {
            row.note = if row.note.is_empty() {
                note
            } else {
                format!("{note}; {}", row.note)
            };
        }
    }
    let width = rows
        .iter()
        .map(|row| row.label.chars().count())
        .max()
        .unwrap_or(0);
    let ms = |value: f64| format!("{value:.2} ms");
    println!(
        "| {:width$} | {:>8} | {:>9} | {:>9} | {:>12} | {:>9} | note |",
        "", "msg/s", "ack p50", "ack p99", "delivery p99", "ratio",
    );
    println!(
        "|{}|{}:|{}:|{}:|{}:|{}:|---|",
        "-".repeat(width + 2),
        "-".repeat(9),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(13),
        "-".repeat(10)
    );
    for row in &rows {
        let delivery = row.delivery_p99.map_or_else(|| "—".to_string(), ms);
        println!(
            "| {:width$} | {:>8.0} | {:>9} | {:>9} | {:>12} | {:>9.2} | {} |",
            row.label,
            row.per_second,
            ms(row.ack_p50),
            ms(row.ack_p99),
            delivery,
            row.per_second / reference_rate,
            row.note,
        );
    }
    println!("ratio: msg/s over \"{reference_label}\" ({reference_rate:.0} msg/s); ack = publish→confirm (RabbitMQ), send→ack (Puente); delivery = publish/send→consumer/reader");
    Ok(())
}
