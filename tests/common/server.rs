//! [`TestServer`]: a Puente server running in the test's own runtime on `127.0.0.1:0`, with a
//! temporary data directory, shut down when dropped; and agency registration through it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use puente::config::{Config, MetricsListen};
use puente::pb::v1::admin_service_client::AdminServiceClient;
use puente::pb::v1::{Agency, AgencyStatus, Region, RegisterAgencyRequest, UpdateAgencyRequest};
use puente::server::ServerError;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{TestPki, WAIT};

/// A Puente server on `127.0.0.1:<ephemeral>` with its own temporary data directory and TLS
/// files. Shuts down when dropped.
pub struct TestServer {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _dir: TempDir,
}

impl TestServer {
    /// A server with the default configuration, trusting `pki`'s CA.
    pub async fn spawn(pki: &TestPki) -> TestServer {
        TestServer::spawn_with(pki, |_| {}).await
    }

    /// A server whose configuration `edit` adjusts (limits, trust domain...) before it starts.
    pub async fn spawn_with(pki: &TestPki, edit: impl FnOnce(&mut Config)) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();

        let dir = tempfile::tempdir().expect("temporary directory");
        let write = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write TLS file");
            path
        };
        let tls_cert = write("server.pem", &pki.server_cert_pem);
        let tls_key = write("server.key", &pki.server_key_pem);
        let client_ca = write("ca.pem", &pki.ca_pem);
        let data_key = dir.path().join("data.keys");
        pki.write_data_keys(&data_key);
        let data_dir = dir.path().join("data");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let mut config = Config {
            listen: addr,
            data_dir: data_dir.clone(),
            tls_cert,
            tls_key,
            client_ca,
            data_key,
            // Tests run many servers at once; none reads their metrics over HTTP.
            metrics_listen: MetricsListen::Off,
            ..Default::default()
        };
        edit(&mut config);

        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stop.await;
            };
            let served = puente::server::run(listener, config, stopped).await;
            if let Err(e) = &served {
                // Otherwise only visible as refused connections.
                eprintln!("test server failed: {e}");
            }
            served
        });
        TestServer {
            addr,
            data_dir,
            shutdown: Some(shutdown),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Asks the server to shut down without waiting for it.
    pub fn request_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts the server down and waits (at most [`WAIT`] plus its drain timeout) until `run`
    /// returns; returns what it returned.
    pub async fn stop(mut self, drain_timeout: Duration) -> Result<(), ServerError> {
        self.request_shutdown();
        let task = self.task.take().expect("server task");
        tokio::time::timeout(WAIT + drain_timeout, task)
            .await
            .expect("server stops in time")
            .expect("server task did not panic")
    }

    /// Registers agency `id` in `region` through AdminService; see [`register_agency`].
    pub async fn register(&self, pki: &TestPki, id: &str, region: Region) -> Agency {
        register_agency(pki, self.addr, id, region).await
    }

    /// Sets the status of a registered agency, keeping its other fields.
    pub async fn set_status(&self, pki: &TestPki, id: &str, status: AgencyStatus) -> Agency {
        let mut admin = pki.admin_client("root", self.addr).await;
        let mut agency = admin
            .list_agencies(puente::pb::v1::AdminServiceListAgenciesRequest {})
            .await
            .expect("admin ListAgencies")
            .into_inner()
            .agencies
            .into_iter()
            .find(|a| a.agency_id == id)
            .unwrap_or_else(|| panic!("{id} is not registered"));
        agency.status = status as i32;
        admin
            .update_agency(UpdateAgencyRequest {
                agency: Some(agency),
            })
            .await
            .unwrap_or_else(|s| panic!("cannot update {id}: {s:?}"))
            .into_inner()
            .agency
            .expect("updated agency")
    }

    /// Suspends a registered agency.
    pub async fn suspend(&self, pki: &TestPki, id: &str) -> Agency {
        self.set_status(pki, id, AgencyStatus::Suspended).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.request_shutdown();
    }
}

/// Registers agency `id` in `region` through the AdminService of the server at `addr` (as
/// administrator `root`) and returns it as stored. The country is the id's first two letters,
/// or `XX` for an international organisation.
pub async fn register_agency(pki: &TestPki, addr: SocketAddr, id: &str, region: Region) -> Agency {
    let mut admin = pki.admin_client("root", addr).await;
    register_agency_with(&mut admin, id, region).await
}

/// Registers agency `id` in `region` through an existing administrator connection (many
/// registrations at once must share one: the server caps connections per identity).
pub async fn register_agency_with(
    admin: &mut AdminServiceClient<Channel>,
    id: &str,
    region: Region,
) -> Agency {
    let country = match region {
        Region::International => "XX".to_string(),
        _ => id[..2].to_string(),
    };
    let agency = Agency {
        agency_id: id.to_string(),
        name: format!("Agency {id}"),
        country,
        region: region as i32,
        status: AgencyStatus::Unspecified as i32,
    };
    admin
        .register_agency(RegisterAgencyRequest {
            agency: Some(agency),
        })
        .await
        .unwrap_or_else(|s| panic!("cannot register {id}: {s:?}"))
        .into_inner()
        .agency
        .expect("registered agency")
}
