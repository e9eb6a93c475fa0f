//! Running one test of this binary again inside a fresh network namespace (`unshare --net`),
//! for tests whose traffic names foreign addresses or that shape the loopback link with `tc`:
//! nothing they send can leave the namespace, and the host's loopback stays untouched.

use std::process::Command;

/// Set in the environment of the inner (namespaced) run.
pub const INNER: &str = "SIP_TESTS_NETNS_INNER";

/// Whether this process is the inner run.
pub fn inside() -> bool {
    std::env::var_os(INNER).is_some()
}

/// Run test `name` (its path inside the test binary, for `--exact`) of the current test
/// binary in a new network namespace with `lo` up; returns its standard output. Panics,
/// with the inner run's output, when the inner run fails or namespaces are not permitted.
pub fn run_inside(name: &str) -> String {
    let exe = std::env::current_exe().expect("current test binary");
    let out = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .output()
        .expect("cannot run `unshare` (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    if !out.status.success() && stderr.contains("unshare failed") {
        panic!(
            "`unshare --net` is not permitted here (this test needs root or unprivileged user \
             namespaces): {stderr}"
        );
    }
    assert!(
        out.status.success(),
        "the namespaced run of {name} failed ({})",
        out.status
    );
    stdout
}
