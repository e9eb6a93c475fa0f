//! The RFC 4475 torture corpus against the running server, read at test time from
//! `shared/torture/rfc4475` (never copied into the repo), with the expectations of its
//! `MANIFEST.tsv`. The messages name foreign addresses (192.0.2.x, example.com), so the test
//! runs in a fresh network namespace: the outer test re-executes this test binary under
//! `unshare --net`, and the inner run starts the server and sends the messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sip_tests::TestServer;
use sip_tests::raw::{RawClient, Received};

/// This test's path inside the test binary, for `--exact`.
const TEST_NAME: &str = "torture::rfc4475_corpus";

const LIMIT: Duration = Duration::from_secs(3);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/torture/rfc4475")
}

/// The code a message must get, where the manifest's element behaviour names one.
fn named_code(name: &str) -> Option<u16> {
    Some(match name {
        "unkscm" | "novelsc" => 416,
        "bext01" => 420,
        "invut" => 415,
        "intmeth" | "esc02" => 501,
        "badvers" => 505,
        "regaut01" => 401,
        "sdp01" => 406,
        _ => return None,
    })
}

#[test]
fn rfc4475_corpus() {
    let dir = corpus_dir();
    if !dir.join("MANIFEST.tsv").is_file() {
        println!("skipped: corpus not found");
        return;
    }
    if sip_tests::netns::inside() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Err(e) = rt.block_on(run_corpus(&dir)) {
            panic!("{e:#}");
        }
        return;
    }
    let stdout = sip_tests::netns::run_inside(TEST_NAME);
    assert!(
        stdout.contains("rfc4475: checked"),
        "the namespaced run did not check the corpus"
    );
}

struct Entry {
    name: String,
    valid: bool,
    path: PathBuf,
}

fn manifest(dir: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv"))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [name, _section, _title, sub, ..] = cols[..] else {
            bail!("bad manifest line {line:?}");
        };
        out.push(Entry {
            name: name.to_string(),
            valid: sub == "valid",
            path: dir.join(sub).join(format!("{name}.sip")),
        });
    }
    Ok(out)
}

/// What one message got, and what is wrong with that.
fn judge(e: &Entry, bytes: &[u8], got: &[Received]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let is_response = text.trim_start().starts_with("SIP/");
    let statuses: Vec<u16> = got.iter().filter_map(Received::status).collect();
    let final_ = statuses.iter().copied().find(|s| *s >= 200);
    let shown = || got.iter().map(Received::first_line).collect::<Vec<_>>();
    if got.len() != statuses.len() {
        return Some(format!(
            "answered with something that is not a SIP response: {:?}",
            shown()
        ));
    }
    if is_response {
        return (!got.is_empty()).then(|| format!("a response was answered: {:?}", shown()));
    }
    if let Some(code) = named_code(&e.name) {
        return (final_ != Some(code)).then(|| format!("expected {code}, got {:?}", shown()));
    }
    if e.valid {
        if final_.is_none() {
            return Some(format!(
                "valid request got no final response: {:?}",
                shown()
            ));
        }
        return statuses
            .contains(&400)
            .then(|| format!("valid request rejected with 400: {:?}", shown()));
    }
    let allowed: &[u16] = if e.name == "mismatch02" {
        &[400, 501]
    } else {
        &[400, 501, 505]
    };
    match final_ {
        None if statuses.is_empty() => None,
        Some(s) if allowed.contains(&s) => None,
        _ => Some(format!(
            "invalid request must get {allowed:?} or nothing: {:?}",
            shown()
        )),
    }
}

/// Each message goes to a server of its own: several corpus messages share a top Via and
/// method (unkscm and novelsc; cparam01 and cparam02; ...), so on one server the later one
/// would rightly be absorbed as a retransmission of the earlier (RFC 3261 §17.2.3).
async fn run_corpus(dir: &Path) -> Result<()> {
    let entries = manifest(dir)?;
    let mut failures = BTreeMap::new();
    for e in &entries {
        let bytes = std::fs::read(&e.path).with_context(|| e.path.display().to_string())?;
        let server = TestServer::start().await?;
        let client = RawClient::bind(server.sip).await?;
        let got = client
            .exchange(&bytes, LIMIT)
            .await
            .with_context(|| format!("{}: the server stopped answering", e.name))?;
        let lines: Vec<String> = got.iter().map(Received::first_line).collect();
        println!(
            "{:<11} {:<7} -> {lines:?}",
            e.name,
            if e.valid { "valid" } else { "invalid" }
        );
        if let Some(problem) = judge(e, &bytes, &got) {
            failures.insert(e.name.clone(), problem);
        }
        client
            .barrier(LIMIT)
            .await
            .with_context(|| format!("{}: OPTIONS afterwards", e.name))?;
        server
            .stop()
            .await
            .with_context(|| format!("{}: stopping the server", e.name))?;
    }
    println!(
        "rfc4475: checked {} messages, {} failures",
        entries.len(),
        failures.len()
    );
    if !failures.is_empty() {
        bail!("RFC 4475 corpus: {failures:#?}");
    }
    Ok(())
}
