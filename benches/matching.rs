//! Hit/no-hit matching at scale: publishes N blinded identifiers (batches of 10,000) through a
//! real server on 127.0.0.1, then measures a 1,000-identifier query and single-identifier
//! query latency.
//!
//! `cargo bench --bench matching -- [--stored 1000000] [--single 2000]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{TestPki, TestServer};
use puente::pb::v1::match_service_client::MatchServiceClient;
use puente::pb::v1::{
    BlindedIdentifier, IdentifierKind, PublishIdentifiersRequest, PublishedIdentifier,
    QueryRequest, Region,
};
use sha2::{Digest, Sha256};

fn option(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == name)
        .map_or(default, |pair| pair[1].parse().expect("a number"))
}

fn identifier(n: usize) -> BlindedIdentifier {
    BlindedIdentifier {
        kind: IdentifierKind::Firearm as i32,
        blinded: Sha256::digest(n.to_be_bytes()).to_vec(),
    }
}

fn query(identifiers: Vec<BlindedIdentifier>) -> QueryRequest {
    QueryRequest {
        key_epoch: 1,
        identifiers,
        case_reference: "BENCH-1".into(),
        legal_basis: "benchmark".into(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let stored = option("--stored", 1_000_000);
    let single = option("--single", 2_000);
    let pki = TestPki::new();
    let server = TestServer::spawn_with(&pki, |config| {
        config.match_query_quota_per_hour = u64::MAX / 2
    })
    .await;
    server.register(&pki, "ES-CNP", Region::Eu).await;
    server.register(&pki, "CO-DIJIN", Region::Celac).await;
    let mut publisher = MatchServiceClient::new(
        pki.client_for(&common::agency_spiffe("ES-CNP"), server.addr)
            .await,
    );
    let mut querier = MatchServiceClient::new(
        pki.client_for(&common::agency_spiffe("CO-DIJIN"), server.addr)
            .await,
    );

    let start = Instant::now();
    for batch in (0..stored).collect::<Vec<_>>().chunks(10_000) {
        publisher
            .publish_identifiers(PublishIdentifiersRequest {
                key_epoch: 1,
                identifiers: batch
                    .iter()
                    .map(|&n| PublishedIdentifier {
                        identifier: Some(identifier(n)),
                        reference: format!("rec-{n}"),
                    })
                    .collect(),
                source_message_id: String::new(),
                case_reference: "BENCH".into(),
            })
            .await
            .expect("publish");
    }
    let publish = start.elapsed();
    println!(
        "publish: {stored} identifiers in {:.1} s = {:.0} identifiers/s",
        publish.as_secs_f64(),
        stored as f64 / publish.as_secs_f64()
    );

    // 1,000 identifiers: 10 that are stored (hits, each notifying the holder), 990 that are not.
    let batch: Vec<BlindedIdentifier> = (0..1_000)
        .map(|i| {
            if i % 100 == 0 {
                identifier(i * 997 % stored.max(1))
            } else {
                identifier(stored + i)
            }
        })
        .collect();
    let start = Instant::now();
    let response = querier
        .query(query(batch))
        .await
        .expect("query")
        .into_inner();
    let hits = response.results.iter().filter(|r| r.hit).count();
    println!(
        "query of 1000 identifiers against {stored} stored: {:.1} ms, {hits} hits",
        start.elapsed().as_secs_f64() * 1e3
    );

    let mut latencies = Vec::with_capacity(single);
    for i in 0..single {
        let started = Instant::now();
        querier
            .query(query(vec![identifier(stored + 10_000 + i)]))
            .await
            .expect("single query");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "single-identifier query (no hit), {single} sequential: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}
