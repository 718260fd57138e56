//! Certificate rotation on the running binary: after SIGHUP the server presents its new
//! certificate and trusts the new CA bundle, while connections opened before keep working.

mod common;

use common::{agency_spiffe, eventually, register_agency, served_with, ServerProcess, TestPki};
use puente::pb::v1::{ListAgenciesRequest, Region};

/// SIGHUP reloads the certificate files without dropping open connections.
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
    eventually("the new certificate to be served", async || {
        served_with(&cert, &key, &new.ca_pem, server.addr).await
    })
    .await;
    open.list_agencies(ListAgenciesRequest {})
        .await
        .expect("the connection opened before the reload is alive");
}
