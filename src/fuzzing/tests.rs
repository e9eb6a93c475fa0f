//! Every seed and every input that ever crashed a fuzz target, replayed through the same
//! entry points the fuzzers use (`fuzz/regressions/<target>/`).

use std::path::Path;

use super::seeds;

fn run(target: &str, data: &[u8]) {
    match target {
        "message" => super::message(data),
        "framing" => super::framing(data),
        "server" => super::server(data),
        "bodies" => super::bodies(data),
        "admin" => super::admin(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

#[test]
fn every_seed_runs_clean() {
    let all = seeds::all();
    for target in ["message", "framing", "server", "bodies", "admin"] {
        let n = all.iter().filter(|s| s.target == target).count();
        assert!(n > 0, "no seed for {target}");
    }
    for s in &all {
        run(s.target, &s.bytes);
    }
}

#[test]
fn every_regression_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for target in ["message", "framing", "server", "bodies", "admin"] {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in dir.flatten() {
            let data = std::fs::read(entry.path()).expect("readable");
            run(target, &data);
            n += 1;
        }
    }
    assert!(n > 0, "no regression inputs under {}", root.display());
}

/// The server seeds reach the states they are meant to reach, so mutations start deep.
#[test]
fn server_seeds_reach_deep_states() {
    use super::harness::{Event, Harness, Mode};
    use crate::sip::Message;
    let expect: [(&str, u8, &str); 9] = [
        ("call-phones", 0, "BYE"),
        ("call-phones-relay", 0, "BYE"),
        ("call-trunks", 3, "BYE"),
        ("call-trunks-tcp", 3, "BYE"),
        ("cancel-busy", 2, "487"),
        ("blf", 0, "NOTIFY"),
        ("main-with-standby", 4, "NOTIFY"),
        ("standby-takeover", 1, "BYE"),
        ("standby-cold", 0, "NOTIFY"),
    ];
    let all = seeds::all();
    for (name, dest, what) in expect {
        let seed = all
            .iter()
            .find(|s| s.target == "server" && s.name == name)
            .unwrap_or_else(|| panic!("no seed {name}"));
        let (&m, events) = seed.bytes.split_first().expect("mode byte");
        let mode = match m & 3 {
            0 => Mode::Single,
            1 => Mode::Main,
            2 => Mode::Standby,
            _ => Mode::StandbyCold,
        };
        let mut h = Harness::new(mode, m & 4 != 0, 0x5eed);
        let mut seen = false;
        for e in Event::decode_all(events) {
            for (d, _, msg) in h.apply(&e) {
                let label = match &msg {
                    Message::Request(r) => r.method.as_str().to_string(),
                    Message::Response(r) => r.status.to_string(),
                };
                seen |= d == dest && label == what;
            }
        }
        assert!(
            seen,
            "seed {name}: the server never sent {what} to source {dest}"
        );
    }
}
