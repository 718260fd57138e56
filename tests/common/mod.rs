//! Shared fixtures of the integration tests, one module per concern:
//!
//! - [`pki`]: a throw-away PKI ([`TestPki`]) and the test trust domain's SPIFFE IDs;
//! - [`client`]: mutual-TLS connections and assertions on call results;
//! - [`server`]: a real server in the test's runtime on `127.0.0.1:0` ([`TestServer`]);
//! - [`process`]: the `puente serve` binary as a child process ([`ServerProcess`]);
//! - [`cli`]: the `puente` binary run as a client ([`CLIENT_ENV`], [`puente_command`]);
//! - [`requests`]: valid requests and what the server must make of them;
//! - [`inbox`]: inbox streams and delivery states;
//! - [`audit`]: checkpoints and consistency proofs, checked as an auditor does;
//! - [`wait`]: [`WAIT`] and [`eventually`].
//!
//! Everything is re-exported here, so that a test file says `use common::*;` or names what it
//! uses. Each test binary uses a subset of these helpers.
#![allow(dead_code)]

pub mod audit;
pub mod cli;
pub mod client;
pub mod inbox;
pub mod pki;
pub mod process;
pub mod requests;
pub mod server;
pub mod wait;

// Each test binary uses a subset of these.
#[allow(unused_imports)]
pub use self::{
    audit::*, cli::*, client::*, inbox::*, pki::*, process::*, requests::*, server::*, wait::*,
};
