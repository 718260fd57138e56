//! Server configuration: plain data loaded from TOML, overridden by flags, validated once.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pb::v1::Topic;

/// Address `puente serve` listens on when none is given.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 50051));
/// Address of the Prometheus metrics endpoint when none is given: loopback only, as metrics name
/// agencies and their volumes.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9464));
/// Directory of the store when none is given.
pub const DEFAULT_DATA_DIR: &str = "puente-data";
/// Trust domain of the SPIFFE IDs accepted when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "puente.local";
/// Largest message accepted, content and attachments together: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most recipients one message may have after expanding `*` and regions.
pub const DEFAULT_MAX_RECIPIENTS: usize = 64;
/// Most attachments one message may carry.
pub const DEFAULT_MAX_ATTACHMENTS: usize = 32;
/// How long a client may take to complete the TLS handshake: a few round trips take well under
/// a second, and a handshake in progress holds a place of the small handshake budget.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// How long shutdown waits for in-flight calls before exiting anyway.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Identifiers one agency may query per hour.
pub const DEFAULT_MATCH_QUERY_QUOTA_PER_HOUR: u64 = 10_000;
/// Calls per second one caller identity may sustain.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 5_000;
/// Calls one caller identity may make at once after a quiet spell.
pub const DEFAULT_REQUEST_BURST: u32 = 10_000;
/// Inbox streams one agency may have open at once.
pub const DEFAULT_INBOX_STREAMS_PER_AGENCY: usize = 16;
/// Default `limits.audit_streams_per_caller`.
pub const DEFAULT_AUDIT_STREAMS_PER_CALLER: usize = 4;
/// Default `limits.audit_streams_total`.
pub const DEFAULT_AUDIT_STREAMS_TOTAL: usize = 256;
/// Default `limits.response_bytes_in_flight`: 256 MiB.
pub const DEFAULT_RESPONSE_BYTES_IN_FLIGHT: u64 = 256 * 1024 * 1024;
/// Default `limits.response_bytes_per_caller`: 64 MiB, room for three answers at the default
/// message size limit.
pub const DEFAULT_RESPONSE_BYTES_PER_CALLER: u64 = 64 * 1024 * 1024;
/// Audited calls (reads, audit queries, refusals) one caller may make per minute after its
/// burst: with the burst, at most 15,400 entries (about 15 MB on disk) per caller per day.
pub const DEFAULT_AUDITED_CALLS_PER_MINUTE: u32 = 10;
/// Audited calls one caller may make at once after a quiet spell: room to read a backlog.
pub const DEFAULT_AUDITED_CALL_BURST: u32 = 1_000;
/// Refused TLS handshakes recorded one by one per minute, all addresses together, after the
/// burst; the others are counted in aggregate entries under the same budget.
pub const DEFAULT_REFUSED_HANDSHAKE_RECORDS_PER_MINUTE: u32 = 6;
/// Refused TLS handshakes recorded one by one, all addresses together, before the rate
/// applies.
pub const DEFAULT_REFUSED_HANDSHAKE_RECORD_BURST: u32 = 100;
/// Established TLS connections the server holds at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;
/// TLS handshakes in progress at once, apart from established connections.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// TLS handshakes in progress at once from one source address (IPv6: one /64): room for a
/// burst of clients behind one NAT; four addresses at it fill `DEFAULT_MAX_HANDSHAKES`, past
/// which crowded addresses give way.
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 64;
/// Established connections one identity may hold: 64 identities at this cap fill
/// `DEFAULT_MAX_CONNECTIONS`, more than the ~42 agencies and their auditors and admins.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 16;
/// How long a connection may have no call open before it is closed (clients reconnect on
/// their next call; an open inbox stream is a call).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Longest life of a connection, so none lives on an old handshake forever.
pub const DEFAULT_MAX_CONNECTION_AGE_SECS: u64 = 3_600;
/// How often the retention sweeper looks for messages to erase.
pub const DEFAULT_RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Everything `puente serve` needs. Paths point at key material; no key bytes are held here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on for gRPC over mutual TLS.
    pub listen: SocketAddr,
    /// Where the Prometheus metrics endpoint (`GET /metrics`, plain HTTP) listens, or `off`.
    pub metrics_listen: MetricsListen,
    /// Directory of the sled store and message objects; created if missing.
    pub data_dir: PathBuf,
    /// PEM certificate chain the server presents.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub client_ca: PathBuf,
    /// PEM certificate revocation list(s) applied to client certificates, if any.
    pub crl: Option<PathBuf>,
    /// Keyring of the data keys that encrypt message bodies at rest (`puente data-key new`);
    /// the last key encrypts, every key decrypts. Keep it off the data disk and its backups.
    pub data_key: PathBuf,
    /// SPIFFE trust domain of accepted client identities.
    pub trust_domain: String,
    /// Message and request limits.
    pub limits: Limits,
    /// Milliseconds a client may take to finish the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Milliseconds shutdown waits for in-flight calls.
    pub drain_timeout_ms: u64,
    /// Seconds after which a connection is closed (clients reconnect and resume); a new
    /// handshake re-checks the certificate against the CRLs in force.
    pub max_connection_age_secs: u64,
    /// Identifiers one agency may look up with MatchService.Query per hour.
    pub match_query_quota_per_hour: u64,
    /// Established TLS connections held at once; more are closed once their handshake ends.
    pub max_connections: usize,
    /// TLS handshakes in progress at once, apart from `max_connections`; when full, a new
    /// connection takes the place of a silent, stalled or crowded one (see
    /// `admission::connections`).
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one source address (IPv6: one /64); a new one
    /// takes the place of a silent or stalled one of that address, else it is closed.
    pub max_handshakes_per_address: usize,
    /// Established connections one identity (SPIFFE ID) may hold; more are closed once their
    /// handshake ends. Connections whose certificate names no usable identity share one cap.
    pub max_connections_per_identity: usize,
    /// Milliseconds a connection may have no call open before the server closes it.
    pub idle_timeout_ms: u64,
    /// When message content is erased.
    pub retention: Retention,
}

/// Where the Prometheus metrics endpoint listens: written as an address (`127.0.0.1:9464`) or
/// `off`, in the config file and in `--metrics-listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsListen {
    /// No metrics endpoint.
    Off,
    /// Serve metrics on this address (port 0 picks a free port).
    On(SocketAddr),
}

/// A `metrics_listen` value that is neither an address nor `off`.
#[derive(Debug, thiserror::Error)]
#[error("metrics_listen must be an address such as 127.0.0.1:9464, or \"off\"; got {0:?}")]
pub struct BadMetricsListen(String);

impl FromStr for MetricsListen {
    type Err = BadMetricsListen;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(MetricsListen::Off);
        }
        s.parse()
            .map(MetricsListen::On)
            .map_err(|_| BadMetricsListen(s.to_string()))
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Off => f.write_str("off"),
            MetricsListen::On(addr) => addr.fmt(f),
        }
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = BadMetricsListen;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MetricsListen> for String {
    fn from(listen: MetricsListen) -> Self {
        listen.to_string()
    }
}

/// Retention periods per topic: once a message is older than its topic's period, its record
/// and body are erased (the audit entries stay, and the erasure is logged). A topic without a
/// period keeps its messages. Periods are written like `"90d"`, `"5years"`, `"12h"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// How often the sweeper looks for expired messages.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// TOPIC_FIREARMS_TRAFFICKING.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub firearms_trafficking: Option<Duration>,
    /// TOPIC_MONEY_LAUNDERING.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub money_laundering: Option<Duration>,
    /// TOPIC_DRUG_EARLY_WARNING.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub drug_early_warning: Option<Duration>,
    /// TOPIC_DRUG_TRAFFICKING.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub drug_trafficking: Option<Duration>,
    /// TOPIC_OTHER.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub other: Option<Duration>,
}

impl Retention {
    /// The retention period of a topic, if it has one.
    pub fn period(&self, topic: Topic) -> Option<Duration> {
        match topic {
            Topic::Unspecified => None,
            Topic::FirearmsTrafficking => self.firearms_trafficking,
            Topic::MoneyLaundering => self.money_laundering,
            Topic::DrugEarlyWarning => self.drug_early_warning,
            Topic::DrugTrafficking => self.drug_trafficking,
            Topic::Other => self.other,
        }
    }

    /// Every topic with a retention period, and the period.
    pub fn periods(&self) -> Vec<(Topic, Duration)> {
        [
            Topic::FirearmsTrafficking,
            Topic::MoneyLaundering,
            Topic::DrugEarlyWarning,
            Topic::DrugTrafficking,
            Topic::Other,
        ]
        .into_iter()
        .filter_map(|topic| Some((topic, self.period(topic)?)))
        .collect()
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            sweep_interval: DEFAULT_RETENTION_SWEEP_INTERVAL,
            firearms_trafficking: None,
            money_laundering: None,
            drug_early_warning: None,
            drug_trafficking: None,
            other: None,
        }
    }
}

/// Bounds on what one request may carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message, content and attachments together, in bytes.
    pub max_message_bytes: usize,
    /// Most recipients after expanding `*` and `region:` entries.
    pub max_recipients: usize,
    /// Most attachments per message.
    pub max_attachments: usize,
    /// Calls per second one caller identity may sustain (all services); more are answered
    /// `RESOURCE_EXHAUSTED` with a retry delay.
    pub requests_per_second: u32,
    /// Calls one caller identity may make in a burst.
    pub request_burst: u32,
    /// Inbox streams one agency may have open at once.
    pub inbox_streams_per_agency: usize,
    /// Bytes of `GetMessage` answers the exchange holds at once for clients that have not read
    /// them yet (all callers together); a call finding no room within a second is answered
    /// `RESOURCE_EXHAUSTED` with a retry delay.
    pub response_bytes_in_flight: u64,
    /// The same, for one caller identity: a client that never reads its answers holds at most
    /// this much of the server's memory. An answer larger than this goes alone.
    pub response_bytes_per_caller: u64,
    /// `ListAuditEntries` streams one caller identity may have open at once; more are answered
    /// `RESOURCE_EXHAUSTED` with a retry delay.
    pub audit_streams_per_caller: usize,
    /// `ListAuditEntries` streams open at once, all callers together.
    pub audit_streams_total: usize,
    /// Calls one caller may make per minute that append an audit entry on its behalf (each
    /// GetMessage read, each AuditService query, each refused call), after its burst; more are
    /// answered `RESOURCE_EXHAUSTED` with a retry delay and append nothing.
    pub audited_calls_per_minute: u32,
    /// Audited calls one caller may make at once after a quiet spell.
    pub audited_call_burst: u32,
    /// Refused TLS handshakes recorded one by one per minute, all source addresses together,
    /// after the burst; the others are counted in aggregate entries within the same budget.
    pub refused_handshake_records_per_minute: u32,
    /// Refused TLS handshakes recorded one by one before the rate applies.
    pub refused_handshake_record_burst: u32,
}

/// How a client reaches the exchange and who it is: one entry of a profiles file
/// (`[name]` tables in TOML). Relative paths are relative to the profiles file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// Server address, `host:port`.
    pub addr: String,
    /// PEM client certificate.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA certificate that issued the server's certificate.
    pub ca: PathBuf,
    /// Name the server certificate must carry.
    pub server_name: String,
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            request_burst: DEFAULT_REQUEST_BURST,
            inbox_streams_per_agency: DEFAULT_INBOX_STREAMS_PER_AGENCY,
            response_bytes_in_flight: DEFAULT_RESPONSE_BYTES_IN_FLIGHT,
            response_bytes_per_caller: DEFAULT_RESPONSE_BYTES_PER_CALLER,
            audit_streams_per_caller: DEFAULT_AUDIT_STREAMS_PER_CALLER,
            audit_streams_total: DEFAULT_AUDIT_STREAMS_TOTAL,
            audited_calls_per_minute: DEFAULT_AUDITED_CALLS_PER_MINUTE,
            audited_call_burst: DEFAULT_AUDITED_CALL_BURST,
            refused_handshake_records_per_minute: DEFAULT_REFUSED_HANDSHAKE_RECORDS_PER_MINUTE,
            refused_handshake_record_burst: DEFAULT_REFUSED_HANDSHAKE_RECORD_BURST,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            metrics_listen: MetricsListen::On(DEFAULT_METRICS_LISTEN),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            client_ca: PathBuf::new(),
            crl: None,
            data_key: PathBuf::new(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            limits: Limits::default(),
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            max_connection_age_secs: DEFAULT_MAX_CONNECTION_AGE_SECS,
            match_query_quota_per_hour: DEFAULT_MATCH_QUERY_QUOTA_PER_HOUR,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            max_connections_per_identity: DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            retention: Retention::default(),
        }
    }
}

impl Config {
    /// Reads a TOML config file; keys it does not set keep their defaults.
    ///
    /// # Errors
    /// The file cannot be read or does not match the schema (unknown keys are refused).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks that the configuration can be served.
    ///
    /// # Errors
    /// `ConfigError::Invalid` naming the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        for (key, path) in [
            ("tls_cert (--tls-cert)", &self.tls_cert),
            ("tls_key (--tls-key)", &self.tls_key),
            ("client_ca (--client-ca)", &self.client_ca),
            (
                "data_key (--data-key; create one with `puente data-key new`)",
                &self.data_key,
            ),
        ] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{key} is required (or run `puente serve --dev` for a development PKI)"
                )));
            }
        }
        if crate::identity::validate_trust_domain(&self.trust_domain).is_err() {
            return invalid("trust_domain must be a lower-case DNS-like name such as puente.local");
        }
        if self.limits.max_message_bytes < 1024 || self.limits.max_message_bytes > 256 << 20 {
            return invalid("limits.max_message_bytes must be between 1024 and 268435456");
        }
        if self.limits.max_recipients == 0 || self.limits.max_recipients > 10_000 {
            return invalid("limits.max_recipients must be between 1 and 10000");
        }
        if self.limits.max_attachments > 1_000 {
            return invalid("limits.max_attachments must be at most 1000");
        }
        if self.limits.requests_per_second == 0 || self.limits.request_burst == 0 {
            return invalid("limits.requests_per_second and limits.request_burst must be positive");
        }
        if self.limits.inbox_streams_per_agency == 0 {
            return invalid("limits.inbox_streams_per_agency must be positive");
        }
        if self.limits.audit_streams_per_caller == 0
            || self.limits.audit_streams_per_caller > self.limits.audit_streams_total
        {
            return invalid("limits.audit_streams_per_caller must be positive and at most limits.audit_streams_total");
        }
        if self.limits.response_bytes_per_caller < 1 << 20
            || self.limits.response_bytes_per_caller > self.limits.response_bytes_in_flight
        {
            return invalid("limits.response_bytes_per_caller must be at least 1048576 (1 MiB) and at most limits.response_bytes_in_flight");
        }
        if self.limits.response_bytes_in_flight > 1 << 40 {
            return invalid(
                "limits.response_bytes_in_flight must be at most 1099511627776 (1 TiB)",
            );
        }
        if self.limits.audited_calls_per_minute == 0 || self.limits.audited_call_burst == 0 {
            return invalid(
                "limits.audited_calls_per_minute and limits.audited_call_burst must be positive",
            );
        }
        if self.limits.refused_handshake_records_per_minute == 0
            || self.limits.refused_handshake_record_burst == 0
        {
            return invalid("limits.refused_handshake_records_per_minute and limits.refused_handshake_record_burst must be positive");
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be positive");
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_address == 0 {
            return invalid("max_handshakes and max_handshakes_per_address must be positive");
        }
        if self.max_connections_per_identity == 0 {
            return invalid("max_connections_per_identity must be positive");
        }
        if self.idle_timeout_ms < 100 {
            return invalid("idle_timeout_ms must be at least 100");
        }
        if self.max_connection_age_secs < 10 {
            return invalid("max_connection_age_secs must be at least 10");
        }
        if self.handshake_timeout_ms == 0 {
            return invalid("handshake_timeout_ms must be positive");
        }
        if self.retention.sweep_interval < Duration::from_secs(1) {
            return invalid("retention.sweep_interval must be at least 1s");
        }
        if let Some((topic, _)) = self
            .retention
            .periods()
            .into_iter()
            .find(|(_, period)| *period < Duration::from_secs(1))
        {
            return Err(ConfigError::Invalid(format!(
                "the retention period of {} must be at least 1s",
                topic.as_str_name()
            )));
        }
        Ok(())
    }

    /// The handshake timeout as a `Duration`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The idle-connection timeout as a `Duration`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The maximum connection age as a `Duration`.
    pub fn max_connection_age(&self) -> Duration {
        Duration::from_secs(self.max_connection_age_secs)
    }

    /// The drain timeout as a `Duration`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_the_keys_it_sets() {
        let config: Config =
            toml::from_str("trust_domain = \"exchange.example\"\n[limits]\nmax_recipients = 5\n")
                .unwrap();
        assert_eq!(config.trust_domain, "exchange.example");
        assert_eq!(config.limits.max_recipients, 5);
        assert_eq!(config.limits.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn retention_periods_are_read_per_topic() {
        let config: Config = toml::from_str(
            "[retention]\nsweep_interval = \"10s\"\nmoney_laundering = \"5years\"\nother = \"90d\"\n",
        )
        .unwrap();
        assert_eq!(config.retention.sweep_interval, Duration::from_secs(10));
        assert_eq!(
            config.retention.periods(),
            vec![
                (Topic::MoneyLaundering, Duration::from_secs(5 * 31_557_600)),
                (Topic::Other, Duration::from_secs(90 * 86_400)),
            ]
        );
        assert_eq!(config.retention.period(Topic::FirearmsTrafficking), None);
        assert!(toml::from_str::<Config>("[retention]\nnarcotics = \"1d\"\n").is_err());
    }

    /// `puente.example.toml` sets every key to its default (but the required paths) and names
    /// every key there is, at least in a comment.
    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let text = include_str!("../puente.example.toml");
        let mut example: Config = toml::from_str(text).expect("the example parses");
        example.validate().expect("the example is valid");
        example.tls_cert = PathBuf::new();
        example.tls_key = PathBuf::new();
        example.client_ca = PathBuf::new();
        example.data_key = PathBuf::new();
        assert_eq!(example, Config::default());

        let mut every = Config {
            crl: Some(PathBuf::from("crl.pem")),
            ..Config::default()
        };
        for topic in [
            &mut every.retention.firearms_trafficking,
            &mut every.retention.money_laundering,
            &mut every.retention.drug_early_warning,
            &mut every.retention.drug_trafficking,
            &mut every.retention.other,
        ] {
            *topic = Some(Duration::from_secs(1));
        }
        let table = toml::Table::try_from(&every).expect("serialise");
        let mut missing = Vec::new();
        for (key, value) in &table {
            let keys: Vec<String> = match value.as_table() {
                Some(section) => section.keys().cloned().collect(),
                None => vec![key.clone()],
            };
            for name in keys {
                let set = text.lines().any(|line| {
                    let line = line.trim_start_matches('#').trim_start();
                    line.starts_with(&format!("{name} ="))
                });
                if !set {
                    missing.push(name);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys missing from puente.example.toml: {missing:?}"
        );
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        assert_eq!(
            Config::default().metrics_listen,
            MetricsListen::On(DEFAULT_METRICS_LISTEN)
        );
        let config: Config = toml::from_str("metrics_listen = \"off\"").unwrap();
        assert_eq!(config.metrics_listen, MetricsListen::Off);
        let config: Config = toml::from_str("metrics_listen = \"0.0.0.0:9100\"").unwrap();
        assert_eq!(
            config.metrics_listen,
            MetricsListen::On("0.0.0.0:9100".parse().unwrap())
        );
        assert!(toml::from_str::<Config>("metrics_listen = \"no\"").is_err());
        assert_eq!("off".parse::<MetricsListen>().unwrap().to_string(), "off");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("listen_addr = \"x\"").is_err());
    }

    #[test]
    fn validate_names_missing_key_material() {
        let err = Config::default().validate().unwrap_err();
        assert!(err.to_string().contains("tls_cert"));
    }
}
