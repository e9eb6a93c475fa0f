//! Scenario n (load): SIPp as hundreds of phones behind the NAT test bed's two home routers
//! (`sipp-scenarios/nat-phone.xml`, one socket per phone: `-t un`, so one NAT mapping per
//! phone and node). Every phone registers at the stand-by and at the main (digest auth), then
//! calls a carrier (a SIPp callee on the public side) through the main; with every call up
//! and known to the stand-by, kill -9 of the main. The stand-by must re-bind the calls over
//! the flows the phones opened to it and take their BYEs: at least 99 % of the calls end
//! normally at the new active, in SIPp's count and in the CDRs.

use std::path::Path;

use sip_tests::natbed;
use sip_tests::sipp::{Sipp, scenarios, stat, stats as sipp_stats};

use super::nat::{in_bed, nat_spec, runtime};
use super::*;

/// Phones per home router.
const PHONES_PER_HOME: usize = 250;
/// The carrier's address: the core router's side towards home 1 (the public Internet).
const CARRIER: &str = "203.0.113.1:5070";

#[test]
fn sipp_phones_behind_nats_keep_their_calls() {
    const BED: &str = "natsipp";
    if !in_bed(BED) {
        natbed::run_in_core(
            BED,
            30,
            "takeover::nat_sipp::sipp_phones_behind_nats_keep_their_calls",
        );
        return;
    }
    runtime()
        .block_on(sipp_load())
        .expect("SIPp phones behind NAT");
}

/// The run, and on failure the end of every SIPp log and error file with the error.
async fn sipp_load() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let r = sipp_run(dir.path()).await;
    if r.is_ok() {
        return r;
    }
    let mut logs = String::new();
    for e in std::fs::read_dir(dir.path())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.ends_with(".err") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            logs.push_str(&format!("--- {name}\n"));
            for l in tail.into_iter().rev() {
                logs.push_str(l);
                logs.push('\n');
            }
        }
    }
    r.with_context(|| logs)
}

async fn sipp_run(dir: &Path) -> Result<()> {
    let homes = [("p1", natbed::PHONE1, "na"), ("p2", natbed::PHONE2, "nb")];
    let mut users = Vec::new();
    for (_, _, prefix) in homes {
        users.extend(names(prefix, PHONES_PER_HOME));
    }
    let carrier: SocketAddr = CARRIER.parse()?;
    let mut spec = nat_spec();
    spec.users = Vec::new();
    let mut spec = spec.with_users(&users);
    spec.trunks.push(TrunkSpec {
        strip: 1,
        ..TrunkSpec::new("carrier", carrier, "9")
    });
    let mut pair = Pair::start("nat-sipp", &spec).await?;
    let want = 2 * PHONES_PER_HOME;

    // The carrier: answers every call, holds it until the phone hangs up, re-bound too.
    let uas_args: Vec<String> = [
        "-sf",
        &scenarios().join("smart-uas.xml").to_string_lossy(),
        "-i",
        "203.0.113.1",
        "-p",
        "5070",
        "-set",
        "publish",
        "0",
        "-set",
        "notifier",
        "489",
        "-m",
        &want.to_string(),
        "-recv_timeout",
        "150000",
        "-timeout",
        "240s",
        "-trace_stat",
        "-stf",
        "carrier.csv",
        "-nostdin",
    ]
    .map(String::from)
    .to_vec();
    let mut carrier_sipp = Sipp::start("carrier", None, dir, &uas_args)?;

    // The phones: 250 behind each router, each its own socket.
    let mut phones = Vec::new();
    for (home, ip, prefix) in homes {
        let csv = dir.join(format!("{prefix}.csv"));
        let mut lines = String::from("SEQUENTIAL\n");
        for u in names(prefix, PHONES_PER_HOME) {
            lines.push_str(&format!("{u};{}\n", password_of(&u)));
        }
        std::fs::write(&csv, lines)?;
        let args: Vec<String> = [
            &format!("{}", pair.main.sip),
            "-sf",
            &scenarios().join("nat-phone.xml").to_string_lossy(),
            // The new active's dialog query: "489 Bad Event", as most phones answer.
            "-oocsf",
            &scenarios().join("smart-notify.xml").to_string_lossy(),
            "-set",
            "notifier",
            "489",
            "-t",
            "un",
            "-max_socket",
            "1000",
            "-i",
            &ip.to_string(),
            "-inf",
            &csv.to_string_lossy(),
            "-set",
            "sb_host",
            &pair.standby.sip.ip().to_string(),
            "-set",
            "sb_port",
            &pair.standby.sip.port().to_string(),
            "-set",
            "callee",
            "91234",
            "-set",
            "bye_after",
            "1000",
            "-m",
            &PHONES_PER_HOME.to_string(),
            "-l",
            &PHONES_PER_HOME.to_string(),
            "-r",
            "50",
            "-d",
            "90000",
            "-timeout",
            "200s",
            "-trace_stat",
            "-stf",
            &format!("{prefix}.csv.stat"),
            "-trace_err",
            "-error_file",
            &format!("{prefix}.err"),
            "-nostdin",
        ]
        .map(String::from)
        .to_vec();
        phones.push((
            prefix,
            Sipp::start(prefix, Some(&natbed::ns(home)), dir, &args)?,
        ));
    }

    wait_synced(&pair.standby, &users).await?;
    pair.main
        .wait_status(Duration::from_secs(60), "carrying every SIPp call", |v| {
            num(&v["counts"], "calls") == want as u64
        })
        .await?;
    let killed = kill_main(&mut pair, want as u64, want as u64).await?;
    let report = wait_settled(&pair.standby, Duration::from_secs(60)).await?;
    show_report("n nat sipp", &report, killed);

    let mut ok = 0;
    let mut failed = 0;
    let mut retrans = 0;
    for (prefix, sipp) in &mut phones {
        sipp.wait(Duration::from_secs(150)).await?;
        let s = sipp_stats(&dir.join(format!("{prefix}.csv.stat")))?;
        ok += stat(&s, "SuccessfulCall(C)");
        failed += stat(&s, "FailedCall(C)");
        retrans += stat(&s, "Retransmissions(C)");
    }
    carrier_sipp.wait(Duration::from_secs(60)).await?;
    let c = sipp_stats(&dir.join("carrier.csv"))?;
    let kept = num(&report, "recovered");
    eprintln!(
        "[n nat sipp] {} SIPp phones behind 2 NATs, {want} calls: {kept} re-bound ({} legs \
         over own flows, {} without), last re-bind {} ms after the takeover started; SIPp \
         phones {ok} calls ended normally, {failed} failed, {retrans} retransmissions; \
         carrier {} ok, {} failed",
        2 * PHONES_PER_HOME,
        num(&report, "nat_own_flow"),
        num(&report, "nat_no_flow"),
        num(&report, "rebind_ms"),
        stat(&c, "SuccessfulCall(C)"),
        stat(&c, "FailedCall(C)"),
    );
    let floor = (want as u64 * 99).div_ceil(100);
    ensure!(
        kept >= floor,
        "{kept} of {want} calls re-bound (want >= 99 %)"
    );
    ensure!(
        ok >= floor,
        "{ok} of {want} SIPp phones' calls ended normally"
    );
    // One leg per call is behind NAT (the carrier's is not).
    ensure!(
        num(&report, "nat_own_flow") >= floor,
        "legs over own flows: {}",
        num(&report, "nat_own_flow")
    );
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    let normal = cdrs
        .iter()
        .filter(|c| c.recovered && c.end_reason == "normal")
        .count();
    ensure!(
        normal as u64 >= floor,
        "{normal} recovered calls ended normally in the new active's CDRs"
    );
    Ok(())
}
