//! Test certificates (the `openssl` command): a CA, and a server certificate for 127.0.0.1
//! signed by it, for the nodes' TLS listeners and the test UAs that check them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// Paths of the test CA's certificate and of the node's certificate and key.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The node's certificate for IP 127.0.0.1 (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl (apt-get install openssl)")?;
    ensure!(st.success(), "openssl {args:?} failed");
    Ok(())
}

/// Make them in `dir`.
pub fn make(dir: &Path) -> Result<TestCerts> {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth, clientAuth\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=understudy test CA",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "node.key",
            "-out",
            "node.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "node.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    )?;
    Ok(TestCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
    })
}
