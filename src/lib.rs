//! Puente: a mutual-TLS gRPC exchange through which law-enforcement and financial-intelligence
//! agencies exchange intelligence. The sender of every message is the identity in its verified
//! client certificate; a message is acknowledged only once it is on stable storage.
//!
//! # Layout
//! - [`pb`]: generated code for the contract in `proto/puente/v1/`, and its descriptors.
//! - [`config`]: server configuration (TOML + flags), validated once.
//! - [`identity`]: SPIFFE IDs, agency ids, and the `Caller` parsed from a client certificate.
//! - [`tls`]: the rustls server configuration (mutual TLS, CRLs, no resumption).
//! - [`server`]: `run(listener, config, shutdown)`: accept loop, handshakes, tonic router.
//! - [`codec`]: requests off the wire: undecodable or truncated ones are INVALID_ARGUMENT.
//! - [`metrics`]: Prometheus metrics, the per-call observation layer of the router (metrics and
//!   one log line per call), and the loopback HTTP endpoint that serves them.
//! - [`telemetry`]: log lines on stderr, as text or JSON, filtered like `RUST_LOG`.
//! - [`exchange`]: `ExchangeService`: validation, recipient expansion, inbox streams.
//! - [`directory`]: the agency registry and `AdminService`.
//! - [`store`]: the store seam ([`store::Store`], every operation the services need from
//!   durable storage), record types, the sealing of message bodies at rest, and the embedded
//!   backend over sled (`store::embedded`: writer and group commit, commit journal, objects).
//! - [`audit`]: the verifiable audit log: Merkle tree, signed checkpoints, `AuditService`.
//! - [`pki`]: the CA: issuing, CSRs, CRLs, the ledger, the development PKI.
//! - [`cli`]: the `puente` command line (server, agency, administrator and auditor clients).
//! - [`matching`]: hit/no-hit matching: identifier canonicalisation and blinding (agency side),
//!   `MatchService` (server side).
//! - [`stix`]: STIX 2.1 export of a message, with TLP 2.0 markings from its handling code.
//! - [`admission`]: per-caller request rates and per-agency inbox stream limits; connection
//!   limits and idle timeout ([`admission::connections`]); budgets of audit entries and log
//!   lines ([`admission::records`]).
//! - [`retention`]: erasure of messages whose topic's retention period ran out.
//! - [`text`]: strings a person reads: the characters the server refuses in them, and how the
//!   CLI escapes what it prints and sanitises the attachment names it saves.
//! - [`rpc`]: the gRPC edge: error → status helpers, refusals recorded in the audit log.
//! - [`time`]: microseconds since the Unix epoch (the stored time unit) and wire timestamps.
//! - [`private_files`]: owner-only directories and files whatever the umask; exposed-key checks.
//! - [`bench`]: the harness of `puente bench` (durable send rate against the bare-tonic bound,
//!   restart, memory, proof latencies) with its typed [`bench::BenchError`], and the echo
//!   service that `server::run_echo` serves for the bound.
//! - [`client`]: a mutual-TLS channel to the exchange as a client profile describes it.

#![warn(unreachable_pub)]

pub mod admission;
pub mod audit;
mod bench;
pub mod cli;
mod client;
mod codec;
pub mod config;
mod directory;
pub mod exchange;
pub mod identity;
pub mod matching;
mod metrics;
pub mod pb;
pub mod pki;
mod private_files;
mod retention;
pub mod rpc;
pub mod server;
pub mod stix;
pub mod store;
pub mod telemetry;
mod text;
mod time;
pub mod tls;
