//! A trunk over TLS (`transport = "tls"`): the node opens a TLS connection to the carrier,
//! checks the carrier's certificate against `tls_ca` and its name (the trunk's IP), and shows
//! its own certificate (the carrier requires one: mutual TLS). The carrier here is a small
//! SIP responder on a rustls server that answers every INVITE `486`. A second trunk points
//! at a carrier whose certificate does not name the address dialled: the handshake fails,
//! the call fails, and the first trunk keeps working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, ensure};
use sip_tests::Ua;
use sip_tests::cluster::{Solo, password_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use understudy::sip::{Message, StreamFramer, response_to};

/// A TLS carrier on `addr` that requires a client certificate from the test CA and answers
/// each INVITE 486; counts the INVITEs it got.
async fn carrier(
    addr: SocketAddr,
    certs: &sip_tests::certs::TestCerts,
) -> Result<Arc<AtomicUsize>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&certs.ca)? {
        roots.add(c?)?;
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&certs.cert)?.collect::<Result<_, _>>()?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(&certs.key)?)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let invites = Arc::new(AtomicUsize::new(0));
    let seen = invites.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut framer = StreamFramer::new();
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let Ok(msgs) = framer.push(&buf[..n]) else {
                        return;
                    };
                    for p in msgs {
                        if let Message::Request(r) = p.message
                            && r.method == understudy::sip::Method::Invite
                        {
                            seen.fetch_add(1, Ordering::Relaxed);
                            let resp = response_to(&r, 486, Some("carrier"));
                            if tls.write_all(&resp.to_bytes()).await.is_err() {
                                return;
                            }
                            let _ = tls.flush().await;
                        }
                    }
                }
            });
        }
    });
    Ok(invites)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_trunk_is_checked_by_name_and_shown_our_certificate() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let certs = sip_tests::certs::make(dir.path())?;
    let good: SocketAddr = format!("127.0.0.1:{}", sip_tests::cluster::free_port()).parse()?;
    // The same certificate (for 127.0.0.1) served at another address: wrong name.
    let wrong: SocketAddr = format!("127.0.0.2:{}", sip_tests::cluster::free_port()).parse()?;
    let good_invites = carrier(good, &certs).await?;
    let wrong_invites = carrier(wrong, &certs).await?;
    let node_extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    );
    let extra = format!(
        "[[trunks]]\nname = \"secure\"\naddress = \"{good}\"\nprefixes = [\"0\"]\ntransport = \"tls\"\n\n\
         [[trunks]]\nname = \"misnamed\"\naddress = \"{wrong}\"\nprefixes = [\"1\"]\ntransport = \"tls\"\n"
    );
    let solo = Solo::start_with(&["alice"], &node_extra, &extra).await?;
    let mut alice = Ua::bind("alice").await?;
    alice.set_server(solo.node.sip);
    alice.set_password(&password_of("alice"));
    ensure!(alice.register().await?.status == 200, "alice registers");

    let out = alice.invite("0123")?;
    let r = alice.wait_final(&out).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nnode log:\n{}",
            std::fs::read_to_string(solo.node.log_path()).unwrap_or_default()
        )
    })?;
    ensure!(
        r.status == 486,
        "through the TLS trunk: {} {}",
        r.status,
        r.reason
    );
    ensure!(
        good_invites.load(Ordering::Relaxed) == 1,
        "the carrier got the INVITE over TLS"
    );

    let out = alice.invite("1123")?;
    let r = alice.wait_final(&out).await.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nnode log:\n{}",
            std::fs::read_to_string(solo.node.log_path()).unwrap_or_default()
        )
    })?;
    // The transport reports the failed handshake at once: a transport failure (408).
    ensure!(
        r.status == 408,
        "a carrier whose certificate does not name it: {} {}",
        r.status,
        r.reason
    );
    ensure!(
        wrong_invites.load(Ordering::Relaxed) == 0,
        "nothing reached the misnamed carrier"
    );
    let log = std::fs::read_to_string(solo.node.log_path()).unwrap_or_default();
    ensure!(
        log.contains("TLS handshake") && log.contains(&wrong.to_string()),
        "the log says why: {}",
        log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );

    // The good trunk still works.
    let out = alice.invite("0124")?;
    let r = alice.wait_final(&out).await?;
    ensure!(r.status == 486, "the TLS trunk again: {}", r.status);
    Ok(())
}
