//! Scenario r: a carrier that requires registration (`sipp-scenarios/carrier-registrar.xml`:
//! digest-challenges every REGISTER, checks the credentials, logs the contact it accepted)
//! and sends its inbound calls to the contact registered last (`smart-uac.xml` from the
//! carrier's address, dialling the phone's number). The main registers at start; kill -9;
//! the new active registers its own address and the carrier's next call reaches the phone
//! through it. The stand-by never registers while the main is alive.

use std::path::Path;

use sip_tests::sipp::{Sipp, scenarios};

use super::*;

/// The carrier's address: any port of this IP is the trunk; its registrar listens on 5060.
const CARRIER_IP: &str = "127.0.0.77";

fn carrier_trunk() -> String {
    format!(
        "\n[[trunks]]\nname = \"carrier\"\naddress = \"{CARRIER_IP}\"\nprefixes = [\"0\"]\n\
         username = \"pbx1\"\npassword = \"trunk-secret\"\nregister = true\n\
         register_expires = 300\ncontact_user = \"pbx1\"\n"
    )
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
    let reg_log = dir.path().join("registrar-log.txt");
    let args: Vec<String> = [
        "-sf",
        &scenarios().join("carrier-registrar.xml").to_string_lossy(),
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
        "-nostdin",
    ]
    .map(String::from)
    .to_vec();
    let _registrar = Sipp::start("registrar", None, dir.path(), &args)?;

    let mut spec = PairSpec::default().with_users(["alice"]);
    spec.extra = carrier_trunk();
    let mut pair = Pair::start("trunk-reg", &spec).await?;
    let main = pair.main.sip.to_string();
    let standby = pair.standby.sip.to_string();
    wait_registered(&reg_log, &main, Duration::from_secs(10)).await?;
    let v = pair.main.get_json("/trunks").await?;
    let reg = &v["trunks"][0]["registration"];
    ensure!(reg["state"] == "registered", "main /trunks: {v}");

    let mut alice = phones(&["alice".into()], pair.standby.sip, false)
        .await?
        .pop()
        .context("alice")?;
    alice.set_server(pair.main.sip);
    let r = alice.register().await?;
    ensure!(r.status == 200, "alice at the main: {}", r.status);

    // Through the main first.
    answer_n(&alice, 1, &Answer::ok());
    inbound_call(dir.path(), &reg_log, "call-before").await?;
    ensure!(
        !registered(&reg_log).iter().any(|c| c.contains(&standby)),
        "the stand-by registered while the main was alive"
    );
    let v = pair.standby.get_json("/trunks").await?;
    ensure!(
        v["trunks"][0]["registration"]["state"] == "off",
        "stand-by /trunks: {v}"
    );

    // kill -9 of the main: the new active registers, and the carrier's call reaches it.
    answer_n(&alice, 1, &Answer::ok());
    let killed = kill_main(&mut pair, 0, 0).await?;
    wait_registered(&reg_log, &standby, Duration::from_secs(10)).await?;
    let registered_after = killed.elapsed();
    inbound_call(dir.path(), &reg_log, "call-after").await?;
    let answered_after = killed.elapsed();
    eprintln!(
        "[r trunk registration] kill -9 -> the new active registered at the carrier: {} ms; \
         -> the carrier's next inbound call answered and ended through it: {} ms",
        registered_after.as_millis(),
        answered_after.as_millis()
    );
    let m = pair.standby.get_text("/metrics").await?;
    ensure!(
        m.contains("understudy_trunk_registered{trunk=\"carrier\"} 1"),
        "metrics: {m}"
    );
    Ok(())
}
