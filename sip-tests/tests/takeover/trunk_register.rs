//! Scenario r: a carrier that requires registration and challenges our calls
//! (`sipp-scenarios/carrier.xml`: digest-challenges every REGISTER and INVITE, checks the
//! credentials, logs the contact it accepted) and sends its inbound calls to the contact
//! registered last (`smart-uac.xml` from the carrier's address, dialling the phone's number).
//! The main registers at start, a phone's outbound call passes the carrier's 407; kill -9;
//! the new active registers its own address, the carrier's next call reaches the phone
//! through it, outbound calls pass the 407 there too, and a trunk configured with a wrong
//! password fails its call at once (503 to the phone, `failed:trunk_auth`), not in a loop.
//! The stand-by never registers while the main is alive.

use std::path::Path;

use sip_tests::sipp::{Sipp, scenarios};

use super::*;

/// The carrier's address: any port of this IP is the trunk; its registrar listens on 5060.
const CARRIER_IP: &str = "127.0.0.77";

fn carrier_trunk() -> String {
    format!(
        "\n[[trunks]]\nname = \"carrier\"\naddress = \"{CARRIER_IP}\"\nprefixes = [\"0\"]\n\
         username = \"pbx1\"\npassword = \"trunk-secret\"\nregister = true\n\
         register_expires = 300\ncontact_user = \"pbx1\"\n\
         \n[[trunks]]\nname = \"carrier-bad\"\naddress = \"{CARRIER_IP}\"\n\
         prefixes = [\"1\"]\nusername = \"pbx-unknown\"\npassword = \"not-the-secret\"\n\
         register = true\n"
    )
}

/// How many lines of the carrier's log contain `what`.
fn count(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// Wait (bounded: SIPp writes its log in its own time) until the carrier's log has `n`
/// lines with `what`, then check it has exactly that many.
async fn expect_count(log: &Path, what: &str, n: usize) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(5);
    while count(log, what) < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        count(log, what) == n,
        "{n} {what} lines expected; carrier log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    Ok(())
}

/// alice calls `number` (a trunk); the carrier answers after its 407; alice hangs up.
async fn outbound_call(alice: &mut Ua, number: &str) -> Result<()> {
    let d = alice.call(number).await?;
    let r = alice.bye(&d).await?;
    ensure!(r.status == 200, "BYE to {number}: {}", r.status);
    Ok(())
}

/// The contacts the carrier accepted so far (un-registrations left out), oldest first.
fn registered(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.split("REGISTERED ").nth(1)?;
            let (contact, expires) = rest.split_once(" expires=")?;
            (expires.trim() != "0").then(|| contact.trim().to_string())
        })
        .collect()
}

/// Wait until the carrier accepted a registration of `hostport`.
async fn wait_registered(log: &Path, hostport: &str, limit: Duration) -> Result<()> {
    let until = Instant::now() + limit;
    loop {
        if registered(log).iter().any(|c| c.contains(hostport)) {
            return Ok(());
        }
        ensure!(
            Instant::now() < until,
            "the carrier saw no registration from {hostport} within {limit:?}: {:?}",
            registered(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One inbound call from the carrier to the contact registered last, dialling `alice`;
/// the carrier hangs up at once. Ok when the call was answered and ended normally.
async fn inbound_call(dir: &Path, log: &Path, name: &'static str) -> Result<()> {
    let last = registered(log).pop().context("no registration")?;
    let hostport = last
        .strip_prefix("sip:")
        .and_then(|c| c.split_once('@'))
        .map(|(_, h)| h.split(';').next().unwrap_or(h).to_string())
        .context("contact")?;
    let args: Vec<String> = [
        hostport.as_str(),
        "-sf",
        &scenarios().join("smart-uac.xml").to_string_lossy(),
        "-set",
        "callee",
        "alice",
        "-set",
        "callee_suffix",
        "0",
        "-set",
        "publish",
        "0",
        "-i",
        CARRIER_IP,
        "-p",
        "5070",
        "-m",
        "1",
        "-d",
        "0",
        "-timeout",
        "20s",
        "-timeout_error",
        "-nostdin",
    ]
    .map(String::from)
    .to_vec();
    let mut call = Sipp::start(name, None, dir, &args)?;
    let status = call.wait(Duration::from_secs(25)).await?;
    ensure!(
        status.success(),
        "the carrier's call to {hostport} failed ({status})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_active_registers_to_the_carrier_and_gets_its_calls() -> Result<()> {
    let dir = sip_tests::server::TempDir::new()?;
    let reg_log = dir.path().join("carrier-log.txt");
    let args: Vec<String> = [
        "-sf",
        &scenarios().join("carrier.xml").to_string_lossy(),
        "-i",
        CARRIER_IP,
        "-p",
        "5060",
        "-set",
        "user",
        "pbx1",
        "-set",
        "password",
        "trunk-secret",
        "-trace_logs",
        "-log_file",
        &reg_log.to_string_lossy(),
        "-timeout",
        "120s",
        // A finished registration's Call-ID comes back with the next REGISTER: a new call.
        "-deadcall_wait",
        "1",
        "-trace_err",
        "-error_file",
        "carrier.log",
        "-nostdin",
    ]
    .map(String::from)
    .to_vec();
    let _carrier = Sipp::start("carrier-sipp", None, dir.path(), &args)?;

    let mut spec = PairSpec::default().with_users(["alice"]);
    spec.extra = carrier_trunk();
    let mut pair = Pair::start("trunk-reg", &spec).await?;
    let main = pair.main.sip.to_string();
    let standby = pair.standby.sip.to_string();
    wait_registered(&reg_log, &main, Duration::from_secs(10)).await?;
    // The trunk with wrong credentials fails, says why, and waits; the other is registered.
    let v = pair
        .main
        .wait_json(
            Duration::from_secs(10),
            "/trunks",
            "carrier-bad refused",
            |v| v["trunks"][1]["registration"]["state"] == "failed",
        )
        .await?;
    let reg = &v["trunks"][0]["registration"];
    ensure!(reg["state"] == "registered", "main /trunks: {v}");
    let bad = &v["trunks"][1]["registration"];
    ensure!(
        bad["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403"))
            && bad["failures"] == 1,
        "carrier-bad: {bad}"
    );

    let mut alice = phones(&["alice".into()], pair.standby.sip, false)
        .await?
        .pop()
        .context("alice")?;
    alice.set_server(pair.main.sip);
    let r = alice.register().await?;
    ensure!(r.status == 200, "alice at the main: {}", r.status);

    // Through the main first: in, then out past the carrier's 407.
    answer_n(&alice, 1, &Answer::ok());
    inbound_call(dir.path(), &reg_log, "call-before").await?;
    outbound_call(&mut alice, "0123").await.with_context(|| {
        format!(
            "carrier log:\n{}\nSIPp:\n{}\nmain log:\n{}",
            std::fs::read_to_string(&reg_log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("carrier.log"))
                .unwrap_or_default()
                .lines()
                .collect::<Vec<_>>()
                .join("\n"),
            pair.main.log_tail(30)
        )
    })?;
    expect_count(&reg_log, "CALL-OK", 1).await?;
    expect_count(&reg_log, "CHALLENGED", 1).await?;
    ensure!(
        !registered(&reg_log).iter().any(|c| c.contains(&standby)),
        "the stand-by registered while the main was alive"
    );
    let v = pair.standby.get_json("/trunks").await?;
    ensure!(
        v["trunks"][0]["registration"]["state"] == "off",
        "stand-by /trunks: {v}"
    );

    // A call to the carrier stays up across the kill: the new active re-binds it, and the
    // carrier challenges that re-INVITE too.
    let held = alice.call("0126").await?;
    // kill -9 of the main: the new active registers, and the carrier's call reaches it.
    answer_n(&alice, 1, &Answer::ok());
    let killed = kill_main(&mut pair, 1, 1).await?;
    wait_registered(&reg_log, &standby, Duration::from_secs(10)).await?;
    let registered_after = killed.elapsed();
    let report = wait_settled(&pair.standby, Duration::from_secs(20)).await?;
    check_report(&report, &[("recovered", 1)]).with_context(|| {
        format!(
            "SIPp errors:\n{}",
            std::fs::read_to_string(dir.path().join("carrier.log")).unwrap_or_default()
        )
    })?;
    expect_count(&reg_log, "REINVITE-CHALLENGED", 1).await?;
    expect_count(&reg_log, "REINVITE-OK", 1).await?;
    let r = alice.bye(&held).await?;
    ensure!(
        r.status == 200,
        "BYE of the re-bound carrier call: {}",
        r.status
    );
    expect_count(&reg_log, "CALL-OK", 2).await?;
    inbound_call(dir.path(), &reg_log, "call-after").await?;
    let answered_after = killed.elapsed();
    eprintln!(
        "[r trunk registration] kill -9 -> the new active registered at the carrier: {} ms; \
         -> the carrier's next inbound call answered and ended through it: {} ms",
        registered_after.as_millis(),
        answered_after.as_millis()
    );
    // Outbound through the new active, past the 407; a wrong password fails at once.
    alice.set_server(pair.standby.sip);
    outbound_call(&mut alice, "0124").await?;
    let out = alice.invite("1125")?;
    let r = alice.wait_final(&out).await?;
    ensure!(
        r.status == 503,
        "a trunk with a wrong password: {} {}",
        r.status,
        r.reason
    );
    // One challenge for each good call, two for the bad one (answered once, then refused).
    expect_count(&reg_log, "CALL-OK", 3).await?;
    // (REINVITE-CHALLENGED lines count here too.)
    expect_count(&reg_log, "CHALLENGED", 6).await?;
    let m = pair.standby.get_text("/metrics").await?;
    ensure!(
        m.contains("understudy_trunk_registered{trunk=\"carrier\"} 1"),
        "metrics: {m}"
    );
    let st = pair.standby.status().await?;
    ensure!(
        st["trunk_registrations"]["carrier"]["state"] == "registered",
        "/status: {}",
        st["trunk_registrations"]
    );
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    // SIGTERM: the new active removed its contact from the carrier (challenge answered).
    let unregistered = format!("REGISTERED sip:pbx1@{standby} expires=0");
    expect_count(&reg_log, &unregistered, 1).await?;
    let reasons: Vec<(&str, Option<&str>)> = cdrs
        .iter()
        .map(|c| (c.end_reason.as_str(), c.trunk.as_deref()))
        .collect();
    ensure!(
        reasons
            .iter()
            .filter(|r| **r == ("normal", Some("carrier")))
            .count()
            == 3
            && reasons.contains(&("failed:trunk_auth", Some("carrier-bad"))),
        "the new active's CDRs: {reasons:?}"
    );
    // The call re-bound past the carrier's challenge: recovered, and its trunk named.
    ensure!(
        cdrs.iter().any(|c| c.recovered
            && c.end_reason == "normal"
            && c.trunk.as_deref() == Some("carrier")),
        "no recovered carrier call among the CDRs"
    );
    Ok(())
}
