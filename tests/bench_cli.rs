//! `puente bench` as run from a terminal: the real binary, a small run, and the report checked
//! for every figure it promises. The figures are only checked to be plausible (present,
//! positive, consistent with the flags), never against a time.

use std::collections::BTreeMap;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_puente"))
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run puente bench")
}

/// The report's `label: value` lines, by label.
fn figures(output: &Output) -> BTreeMap<String, String> {
    assert!(
        output.status.success(),
        "puente bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8 report")
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(label, value)| (label.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The number at the start of a figure (`4870 msg/s`, `6.10 ms`, `ready in 45.2 ms`).
fn number(figures: &BTreeMap<String, String>, label: &str) -> f64 {
    let value = figures
        .get(label)
        .unwrap_or_else(|| panic!("no {label:?} line in {figures:#?}"));
    value
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no number in {label}: {value}"))
}

/// `puente bench` reports the durable rate against its bound, the restart time, memory and proofs,
/// all plausible.
#[test]
fn reports_the_durable_rate_against_the_bound_then_restart_memory_and_proofs() {
    let output = bench(&[
        "--senders",
        "2",
        "--readers",
        "2",
        "--messages",
        "200",
        "--preload",
        "100",
        "--proofs",
        "20",
    ]);
    let figures = figures(&output);

    assert_eq!(number(&figures, "payload size"), 1024.0);
    assert_eq!(number(&figures, "messages"), 200.0);
    assert_eq!(number(&figures, "preloaded"), 100.0);
    assert!(number(&figures, "durable rate") > 0.0);
    for latency in [
        "send->ack p50",
        "send->ack p99",
        "send->ack p99.9",
        "send->delivery p50",
        "send->delivery p99",
        "group commit flush (mean)",
        "bound RTT p50",
    ] {
        assert!(number(&figures, latency) > 0.0, "{latency}");
    }
    assert!(number(&figures, "send->ack p50") <= number(&figures, "send->ack p99"));
    assert!(number(&figures, "group commit size (mean)") >= 1.0);
    assert!(number(&figures, "bound rate (bare tonic echo)") > 0.0);
    assert!(number(&figures, "durable / bound") > 0.0);
    // Process CPU is counted in 10 ms ticks: a run this short may round to nothing.
    for cpu in ["CPU per message (process)", "bound CPU per echo (process)"] {
        assert!(number(&figures, cpu) >= 0.0, "{cpu}");
    }
    assert!(figures.contains_key("summary"));

    assert!(number(&figures, "restart with 300 stored") > 0.0);
    assert!(number(&figures, "VmRSS (server and clients)") > 0.0);
    assert!(
        number(&figures, "VmHWM (server and clients)")
            >= number(&figures, "VmRSS (server and clients)")
    );
    for proof in [
        "inclusion proof p50",
        "inclusion proof p99",
        "consistency proof p50",
        "consistency proof p99",
        "inclusion proof computed p50/p99",
        "consistency proof computed p50/p99",
        "fdatasync p50 (data dir)",
        "2 x bound RTT p50 + fdatasync",
    ] {
        assert!(number(&figures, proof) > 0.0, "{proof}");
    }
}

/// The JSON report of `puente bench` holds only the sections that were measured.
#[test]
fn json_report_holds_the_measured_sections_only() {
    let output = bench(&[
        "--senders",
        "2",
        "--readers",
        "0",
        "--messages",
        "50",
        "--proofs",
        "0",
        "--skip-bound",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "puente bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");

    assert_eq!(report["durable"]["messages"], 50);
    assert!(report["durable"]["per_second"].as_f64().expect("a rate") > 0.0);
    assert!(
        report["durable"]["send_to_delivery"].is_null(),
        "no readers"
    );
    assert!(report["bound"].is_null());
    assert!(report["durable_to_bound"].is_null());
    assert_eq!(report["restart"]["stored"], 50);
    assert!(report["proofs"].is_null());
}

/// `puente bench` refuses a data directory that is not empty.
#[test]
fn refuses_a_data_dir_that_is_not_empty() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("something"), "").expect("write a file");
    let data_dir = dir.path().to_str().expect("UTF-8 path");

    let output = bench(&["--data-dir", data_dir, "--messages", "10"]);

    assert!(!output.status.success());
    assert!(
        dir.path().join("something").exists(),
        "the directory is left alone"
    );
}
