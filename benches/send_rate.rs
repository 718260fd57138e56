//! Durable send rate: N concurrent senders (own mutual-TLS connection each) send fixed-size
//! messages to one recipient through a real server on 127.0.0.1; every send is answered only
//! after its group commit is fsynced. Prints msg/s and send→ack latency percentiles.
//!
//! `cargo bench --bench send_rate -- [--senders 32] [--messages 20000] [--size 1024]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::{message, TestPki, TestServer};
use puente::pb::v1::{send_message_request, Region};

struct Options {
    senders: usize,
    messages: usize,
    size: usize,
}

fn options() -> Options {
    let mut options = Options {
        senders: 32,
        messages: 20_000,
        size: 1024,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = || pair[1].parse::<usize>().expect("a number");
        match pair[0].as_str() {
            "--senders" => options.senders = value(),
            "--messages" => options.messages = value(),
            "--size" => options.size = value(),
            _ => {}
        }
    }
    options
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let options = options();
    let pki = TestPki::new();
    let server = TestServer::spawn(&pki).await;
    let senders = ["ES-CNP", "BE-FPJ", "FR-OCLCO", "PT-PJ"];
    for id in senders {
        server.register(&pki, id, Region::Eu).await;
    }
    server.register(&pki, "CO-DIJIN", Region::Celac).await;

    let per_sender = options.messages / options.senders;
    let text = "x".repeat(options.size);
    let mut clients = Vec::new();
    for i in 0..options.senders {
        clients.push(
            pki.agency_client(senders[i % senders.len()], server.addr)
                .await,
        );
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_sender);
            for n in 0..per_sender {
                let mut request = message(&format!("bench-{i}-{n}"), &["CO-DIJIN"]);
                request.content = Some(send_message_request::Content::Text(text.clone()));
                let sent = Instant::now();
                client.send_message(request).await.expect("send");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("sender task"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let total = latencies.len();
    println!(
        "durable sends: {total} x {} B from {} senders in {:.2} s = {:.0} msg/s; send->ack p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        options.size,
        options.senders,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 0.999).as_secs_f64() * 1e3,
    );
}
