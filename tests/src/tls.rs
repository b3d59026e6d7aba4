//! TLS for tests: a certificate authority made on the spot (`rcgen`), certificates for
//! `localhost` signed by it, and a TLS-terminating proxy that forwards to a plain broker port,
//! so a client's TLS handshake, CA check and host name check are real against a broker that
//! has no TLS listener of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A certificate authority of the test's own.
pub struct Ca {
    /// Its certificate, PEM: what a client is told to trust.
    pub pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A new CA with this common name.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A certificate for `localhost` signed by this CA, and its key.
    pub fn localhost(&self) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("server parameters")
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        (cert, key)
    }

    /// Write the CA certificate and a `localhost` certificate with its key as PEM files in
    /// `dir`: (CA, certificate, key).
    pub fn write_files(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.localhost();
        let files = (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        );
        std::fs::write(&files.0, &self.pem).expect("write the CA");
        std::fs::write(&files.1, cert.pem()).expect("write the certificate");
        std::fs::write(&files.2, key.serialize_pem()).expect("write the key");
        files
    }
}

/// A local port that terminates TLS for `localhost` with a certificate signed by `ca` and
/// forwards each connection to `target` in plain TCP.
pub async fn tls_proxy(ca: &Ca, target: SocketAddr) -> SocketAddr {
    let (cert, key) = ca.localhost();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server TLS config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                if let Ok(mut broker) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                }
            });
        }
    });
    addr
}

/// Connect with a configuration that must be refused (a wrong CA, a host name the certificate
/// does not name, no TLS at all), and check it is refused quickly (within `limit`), not after
/// the client's retries; the error is printed for the test's output.
pub async fn refused_quickly<T, E: std::fmt::Display>(
    what: &str,
    limit: std::time::Duration,
    connect: impl std::future::Future<Output = Result<T, E>>,
) {
    let started = std::time::Instant::now();
    let error = match connect.await {
        Ok(_) => panic!("{what}: the connection was accepted"),
        Err(error) => error,
    };
    assert!(
        started.elapsed() < limit,
        "{what}: failed only after {:?}: {error}",
        started.elapsed()
    );
    println!("{what}: {error}");
}
