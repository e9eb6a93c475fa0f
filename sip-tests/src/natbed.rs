//! The NAT test bed from Rust ([`NatBed`]): namespaces for the two node sites and two homes
//! with masquerading routers (`sip-tests/nat/natbed.sh`, which documents the layout), sockets
//! created inside a namespace ([`udp_in`]), and the test itself re-run inside the core
//! namespace ([`run_in_core`]), from where every site is reachable as on the Internet.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Set in the environment of the inner run: the bed's prefix.
pub const INNER: &str = "SIP_TESTS_NATBED";

/// The main site's address.
pub const MAIN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
/// The stand-by site's address.
pub const STANDBY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2));
/// Phone 1's private address (behind home 1).
pub const PHONE1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 130));
/// Phone 2's private address (behind home 2).
pub const PHONE2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 134));
/// Home 1's public address.
pub const HOME1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 2));
/// Home 2's public address.
pub const HOME2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 6));

/// A NAT test bed; deleted on drop.
#[derive(Debug)]
pub struct NatBed {
    prefix: String,
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nat/natbed.sh")
}

impl NatBed {
    /// Create the bed; `udp_timeout_s` is the home routers' UDP flow timeout.
    pub fn up(prefix: &str, udp_timeout_s: u32) -> Result<Self> {
        let out = Command::new(script())
            .args(["up", prefix])
            .env("NAT_UDP_TIMEOUT", udp_timeout_s.to_string())
            .output()
            .context("running natbed.sh (needs root, iproute2 and nftables)")?;
        let bed = Self {
            prefix: prefix.to_string(),
        };
        if !out.status.success() {
            bail!(
                "natbed.sh up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(bed)
    }

    /// The namespace of `site` (`core`, `main`, `sb`, `h1`, `p1`, `h2`, `p2`).
    pub fn ns(&self, site: &str) -> String {
        format!("{}-{site}", self.prefix)
    }
}

impl Drop for NatBed {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.prefix]).status();
    }
}

/// The namespace name of `site` in the bed the inner run lives in.
pub fn ns(site: &str) -> String {
    format!(
        "{}-{site}",
        std::env::var(INNER).unwrap_or_else(|_| "natbed".into())
    )
}

/// Whether this process is the inner run (inside the core namespace).
pub fn inside() -> bool {
    std::env::var_os(INNER).is_some()
}

/// A UDP socket bound to `addr` inside namespace `ns` (a socket keeps the namespace it was
/// created in, whichever thread uses it later).
pub fn udp_in(ns: &str, addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<std::net::UdpSocket> {
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {ns}"))?;
            std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr} in {ns}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}

/// Create a bed named `prefix`, run test `name` of this test binary again inside its core
/// namespace, delete the bed; returns the inner run's standard output. Panics when the inner
/// run fails.
pub fn run_in_core(prefix: &str, udp_timeout_s: u32, name: &str) -> String {
    let bed = NatBed::up(prefix, udp_timeout_s).expect("NAT test bed");
    let exe = std::env::current_exe().expect("current test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.ns("core")])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INNER, prefix)
        .output()
        .expect("cannot run `ip netns exec`");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    drop(bed);
    assert!(
        out.status.success(),
        "the run of {name} in the NAT test bed failed ({})",
        out.status
    );
    stdout
}
