//! The layer map, checked: the sans-IO protocol layers (message model, transactions,
//! dialogs, B2BUA, registrar, pair protocol, the server core that joins them, and the plain
//! value types in `net`) use no I/O module — no `transport`, no `node`, no `tokio` — so the
//! simulator and the fuzzers can drive them on a virtual clock. The one exception is the
//! epoch store (`pair/epoch.rs`), the file the node writes off its event loop.

#![allow(clippy::expect_used)] // a test: a failure to read the sources fails it

use std::path::{Path, PathBuf};

const SANS_IO: &[&str] = &[
    "sip",
    "transaction",
    "dialog",
    "b2bua",
    "registrar",
    "pair",
    "server",
    "net.rs",
    "entropy.rs",
];

const EXEMPT: &[&str] = &["pair/epoch.rs"];

const FORBIDDEN: &[&str] = &[
    "crate::transport",
    "crate::node",
    "tokio::",
    "std::net::UdpSocket",
];

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .expect("readable source dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if p.extension().is_some_and(|x| x == "rs") {
        out.push(p.to_path_buf());
    }
}

/// Test files (`tests.rs`, `*_tests.rs`, `tests/`) may use anything.
fn is_test(rel: &str) -> bool {
    rel.ends_with("tests.rs") || rel.contains("/tests/")
}

#[test]
fn protocol_layers_use_no_io_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for m in SANS_IO {
        rust_files(&src.join(m), &mut files);
    }
    assert!(files.len() > 40, "found only {} files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if is_test(&rel) || EXEMPT.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable source");
        // Code after `#[cfg(test)]` at the top level is test code.
        let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for pat in FORBIDDEN {
                if line.contains(pat) {
                    bad.push(format!("src/{rel}:{}: {pat}", n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "protocol layers using I/O modules:\n{}",
        bad.join("\n")
    );
}
