//! Certificate rotation on the running binary: after SIGHUP the server presents its new
//! certificate and trusts the new CA bundle, while connections opened before keep working.

mod common;

use std::time::Duration;

use common::{agency_spiffe, connect, register_agency, ServerProcess, TestPki, WAIT};
use puente::pb::v1::exchange_service_client::ExchangeServiceClient;
use puente::pb::v1::{ListAgenciesRequest, Region};

#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_open_connections() {
    let old = TestPki::new();
    let new = TestPki::new();
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).expect("write");
    old.write_server_files(dir.path());
    let server = ServerProcess::start(dir.path());

    for (id, region) in [("ES-CNP", Region::Eu), ("CO-DIJIN", Region::Celac)] {
        register_agency(&old, server.addr, id, region).await;
    }
    let mut open = old.agency_client("ES-CNP", server.addr).await;
    open.list_agencies(ListAgenciesRequest {})
        .await
        .expect("before rotation");

    // Rotate: new server certificate from the new CA, client bundle with both CAs.
    write("ca.pem", &format!("{}{}", old.ca_pem, new.ca_pem));
    write("server.key", &new.server_key_pem);
    write("server.pem", &new.server_cert_pem);
    server.signal("HUP");

    let (cert, key) = new.issue(&agency_spiffe("CO-DIJIN"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let served = match connect(&cert, &key, &new.ca_pem, server.addr).await {
            Ok(channel) => ExchangeServiceClient::new(channel)
                .list_agencies(ListAgenciesRequest {})
                .await
                .is_ok(),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open.list_agencies(ListAgenciesRequest {})
        .await
        .expect("the connection opened before the reload is alive");
}
