//! Optional HTTPS (issue 11 §4, docs/security.md "TLS"): with `tls.cert_file` and `tls.key_file`
//! the listener speaks only TLS; a key that does not fit the certificate, or half a configuration,
//! stops startup with a message naming the problem.

use std::path::PathBuf;

use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::common::{Server, UPSERT, batch, start_expecting_failure, steps, temp_dir};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name).display().to_string()
}

#[tokio::test]
async fn https_serves_ingestion_and_reads_and_plain_http_gets_nothing() {
    let dir = temp_dir();
    let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
    let server = Server::start_with(
        dir.path(),
        &[("VITALFLOW_TLS_CERT_FILE", cert.as_str()), ("VITALFLOW_TLS_KEY_FILE", key.as_str())],
    );
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    server.ready().await;

    let body = batch(
        "tls-1",
        "u-tls",
        vec![steps("r1", "com.example.watch", "2024-03-04T08:00:00Z", "2024-03-04T08:30:00Z", 1200.0)],
    );
    let (status, ack) = server.post(UPSERT, &body).await;
    assert_eq!(status, 200, "{ack}");
    let epoch = ack["epoch"].as_u64().expect("epoch");
    let (status, read) =
        server.get(&format!("/v1/users/u-tls/daily-rollups?metric=steps&minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200, "{read}");
    let sums: Vec<f64> = read["rows"].as_array().expect("rows").iter().filter_map(|r| r["sum"].as_f64()).collect();
    assert_eq!(sums, vec![1200.0], "{read}");

    // The same port over plain HTTP: no HTTP answer at all (the TLS layer refuses the bytes).
    let plain = server.base.replacen("https://", "http://", 1);
    let r =
        reqwest::Client::new().get(format!("{plain}/healthz")).timeout(std::time::Duration::from_secs(10)).send().await;
    assert!(r.is_err(), "plain HTTP got an answer: {:?}", r.map(|r| r.status()));

    // And a client that does not trust the certificate refuses the connection.
    let r = reqwest::Client::new().get(server.url("/healthz")).timeout(std::time::Duration::from_secs(10)).send().await;
    assert!(r.is_err(), "an untrusted certificate was accepted");
    let (status, health) = server.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
}

#[test]
fn a_key_that_does_not_fit_the_certificate_stops_startup() {
    let dir = temp_dir();
    let (cert, other) = (fixture("cert.pem"), fixture("other-key.pem"));
    let (status, stderr) = start_expecting_failure(
        dir.path(),
        &[("VITALFLOW_TLS_CERT_FILE", cert.as_str()), ("VITALFLOW_TLS_KEY_FILE", other.as_str())],
    );
    let status = status.expect("vitalflow exited");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("tls.key_file") && stderr.contains("does not fit"), "{stderr}");
}

#[test]
fn half_a_tls_configuration_stops_startup() {
    let dir = temp_dir();
    let cert = fixture("cert.pem");
    let (status, stderr) = start_expecting_failure(dir.path(), &[("VITALFLOW_TLS_CERT_FILE", cert.as_str())]);
    assert!(!status.expect("vitalflow exited").success(), "{stderr}");
    assert!(stderr.contains("TLS needs both"), "{stderr}");

    let missing = dir.path().join("missing.pem").display().to_string();
    let key = fixture("key.pem");
    let (status, stderr) = start_expecting_failure(
        dir.path(),
        &[("VITALFLOW_TLS_CERT_FILE", missing.as_str()), ("VITALFLOW_TLS_KEY_FILE", key.as_str())],
    );
    assert!(!status.expect("vitalflow exited").success(), "{stderr}");
    assert!(stderr.contains("tls.cert_file"), "{stderr}");
}

/// A client that completes the TLS handshake and then sends nothing is closed after the header
/// read timeout: it cannot hold a connection slot.
#[tokio::test]
async fn an_idle_tls_session_is_closed() {
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;
    let dir = temp_dir();
    let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
    let server = Server::start_with(
        dir.path(),
        &[
            ("VITALFLOW_TLS_CERT_FILE", cert.as_str()),
            ("VITALFLOW_TLS_KEY_FILE", key.as_str()),
            ("VITALFLOW_HEADER_READ_TIMEOUT_MS", "500"),
        ],
    );
    server.ready().await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).expect("cert");
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("a certificate")).expect("root");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = server.base.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    let mut buf = [0_u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), tls.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an idle TLS session stayed open: {read:?}");
}
