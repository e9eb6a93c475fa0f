//! [`RawClient`]: a bare UDP socket for sending arbitrary bytes (malformed messages, the RFC
//! 4475 corpus, floods) and collecting what the server sends back.
//!
//! The server reads one socket in order and answers each datagram before it reads the next,
//! so "no response" is established without a fixed wait: after the bytes under test the
//! client sends an OPTIONS probe, and whatever arrived before the probe's answer is the
//! server's whole immediate reaction to those bytes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::net::UdpSocket;
use understudy::sip::{Message, SipMessage, parse_datagram};

/// A datagram the client received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The bytes.
    pub bytes: Bytes,
    /// The message, if it parsed.
    pub message: Option<Message>,
}

impl Received {
    /// The status, if this is a response.
    pub fn status(&self) -> Option<u16> {
        match &self.message {
            Some(Message::Response(r)) => Some(r.status),
            _ => None,
        }
    }

    /// The first line, for failure messages.
    pub fn first_line(&self) -> String {
        String::from_utf8_lossy(&self.bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// A UDP socket on 127.0.0.1 talking to one server.
#[derive(Debug)]
pub struct RawClient {
    sock: UdpSocket,
    server: SocketAddr,
}

impl RawClient {
    /// Bind `127.0.0.1:0`.
    pub async fn bind(server: SocketAddr) -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        Ok(Self { sock, server })
    }

    /// Our address.
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap_or_else(|_| unreachable!())
    }

    /// Send one datagram to the server.
    pub async fn send(&self, bytes: &[u8]) -> Result<()> {
        self.sock
            .send_to(bytes, self.server)
            .await
            .context("send to server")?;
        Ok(())
    }

    /// Receive one datagram within `limit`.
    pub async fn recv(&self, limit: Duration) -> Result<Option<Received>> {
        let mut buf = vec![0u8; 65_535];
        match tokio::time::timeout(limit, self.sock.recv_from(&mut buf)).await {
            Err(_) => Ok(None),
            Ok(r) => {
                let (n, _) = r?;
                let bytes = Bytes::copy_from_slice(&buf[..n]);
                let message = parse_datagram(&bytes).ok().map(|p| p.message);
                Ok(Some(Received { bytes, message }))
            }
        }
    }

    /// An OPTIONS request from this socket with Call-ID `call_id`.
    pub fn options_bytes(&self, call_id: &str) -> Vec<u8> {
        let me = self.addr();
        format!(
            "OPTIONS sip:{srv} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK{cid};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@{me}>;tag=probe\r\n\
             To: <sip:{srv}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            srv = self.server,
            cid = call_id,
        )
        .into_bytes()
    }

    /// Send an OPTIONS probe and return what arrived before its response (within `limit`).
    /// Fails if the probe is not answered with 200: the server stopped answering.
    pub async fn barrier(&self, limit: Duration) -> Result<Vec<Received>> {
        let call_id = format!("probe{:016x}", rand::random::<u64>());
        self.send(&self.options_bytes(&call_id)).await?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(r) = self.recv(left).await? else {
                bail!("the server did not answer an OPTIONS probe within {limit:?}");
            };
            let is_probe =
                matches!(&r.message, Some(m) if m.call_id().ok() == Some(call_id.as_str()));
            if !is_probe {
                before.push(r);
                continue;
            }
            if r.status() != Some(200) {
                bail!("OPTIONS probe answered {:?}", r.first_line());
            }
            return Ok(before);
        }
    }

    /// Send `bytes`, then a probe; the server's immediate answers to `bytes`.
    pub async fn exchange(&self, bytes: &[u8], limit: Duration) -> Result<Vec<Received>> {
        self.send(bytes).await?;
        self.barrier(limit).await
    }
}
