//! Scenario n: phones behind NAT (`natbed`: two homes whose routers masquerade with a random
//! public port per flow and admit only replies). The nodes run in their own site namespaces,
//! the test in the core namespace, each phone in its home's LAN.
//!
//! - Registered at both nodes: the stand-by re-binds the call over the flows the phones
//!   opened to it (not the main's), the call goes on and its BYE completes there.
//! - Registered at the main only: the stand-by's re-bind cannot pass the routers; the
//!   takeover report names both phones ("NAT: no flow"), the call ends with its CDR and
//!   nothing waits for ever.
//! - Idle for five NAT timeouts: the stand-by's keep-alives over each phone's flow keep its
//!   router's door open, and after the takeover a new call reaches the phone through it;
//!   with the keep-alives off, the door closes and the call does not get through.

use sip_tests::cluster::Site;
use sip_tests::natbed;

use super::*;

/// Both phones' UAs: alice behind home 1, bob behind home 2, each registered at the main (and
/// first at the stand-by when `at_both`), the main their server afterwards.
async fn nat_phones(pair: &Pair, at_both: bool) -> Result<(Ua, Ua)> {
    let mut out = Vec::new();
    for (name, home, ip) in [
        ("alice", "p1", natbed::PHONE1),
        ("bob", "p2", natbed::PHONE2),
    ] {
        let sock = natbed::udp_in(&natbed::ns(home), SocketAddr::new(ip, 5060))?;
        let mut ua = Ua::with_socket(name, sock, false).await?;
        ua.set_password(&password_of(name));
        let servers: &[SocketAddr] = if at_both {
            &[pair.standby.sip, pair.main.sip]
        } else {
            &[pair.main.sip]
        };
        for s in servers {
            ua.set_server(*s);
            let r = ua.register().await?;
            ensure!(r.status == 200, "{name} at {s}: REGISTER got {}", r.status);
        }
        out.push(ua);
    }
    let bob = out.pop().context("bob")?;
    let alice = out.pop().context("alice")?;
    Ok((alice, bob))
}

pub(super) fn nat_spec() -> PairSpec {
    nat_spec_with("")
}

fn nat_spec_with(extra: &str) -> PairSpec {
    let mut spec = PairSpec::default().with_users(["alice", "bob"]);
    spec.extra = extra.to_string();
    spec.sites = Some([
        Site {
            netns: natbed::ns("main"),
            ip: natbed::MAIN,
            peer_via: None,
        },
        Site {
            netns: natbed::ns("sb"),
            ip: natbed::STANDBY,
            peer_via: None,
        },
    ]);
    spec
}

/// alice calls bob through the main; the stand-by's digest knows the call.
async fn call_through_main(pair: &Pair, alice: Ua, bob: &Ua) -> Result<(Ua, Call)> {
    wait_synced(&pair.standby, &["alice".into(), "bob".into()]).await?;
    answer_n(bob, 1, &Answer::ok());
    let (mut callers, calls) = set_up_calls(
        vec![alice],
        vec![vec!["bob".into()]],
        std::slice::from_ref(bob),
        1,
    )
    .await?;
    pair.standby
        .wait_status(Duration::from_secs(5), "knowing the call", |v| {
            num(&v["digest"], "calls_known") >= 1
        })
        .await?;
    let call = calls.into_iter().next().context("one call")?;
    Ok((callers.pop().context("alice")?, call))
}

/// The public source port the node saw `aor`'s REGISTER (own) or learned from the peer.
async fn source_of(node: &Node, aor: &str, own: bool) -> Result<Option<String>> {
    let v = node.get_json("/registrations").await?;
    Ok(v["registrations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["aor"] == aor)
        .flat_map(|r| r["contacts"].as_array().cloned().unwrap_or_default())
        .find(|c| c["own_flow"] == own)
        .and_then(|c| c["source"].as_str().map(str::to_string)))
}

/// `callers` behind home 1 and `callees` behind home 2 (ports 6000, 6001, … each), every
/// one registered at both nodes, all at once.
pub(super) async fn homes_of(
    pair: &Pair,
    callers: &[String],
    callees: &[String],
) -> Result<(Vec<Ua>, Vec<Ua>)> {
    let mut homes = Vec::new();
    for (group, home, ip) in [
        (callers, "p1", natbed::PHONE1),
        (callees, "p2", natbed::PHONE2),
    ] {
        let mut uas = Vec::new();
        for (i, name) in group.iter().enumerate() {
            let port = 6000 + u16::try_from(i)?;
            let sock = natbed::udp_in(&natbed::ns(home), SocketAddr::new(ip, port))?;
            let ua = Ua::with_socket(name, sock, false).await?;
            ua.set_password(&password_of(name));
            uas.push(ua);
        }
        let (uas, _) = par(uas, |_, mut ua| {
            let servers = [pair.standby.sip, pair.main.sip];
            async move {
                for s in servers {
                    ua.set_server(s);
                    match ua.register().await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            let e = anyhow!("{} at {s}: REGISTER got {}", ua.user(), r.status);
                            return (ua, Err(e));
                        }
                        Err(e) => return (ua, Err(e)),
                    }
                }
                (ua, Ok(()))
            }
        })
        .await?;
        homes.push(uas);
    }
    let ee = homes.pop().context("callees")?;
    let ec = homes.pop().context("callers")?;
    Ok((ec, ee))
}

pub(super) fn in_bed(name: &str) -> bool {
    natbed::inside() && std::env::var(natbed::INNER).is_ok_and(|p| p == name)
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn phones_behind_nat_registered_at_both_nodes_keep_their_call() {
    const BED: &str = "natboth";
    if !in_bed(BED) {
        natbed::run_in_core(
            BED,
            30,
            "takeover::nat::phones_behind_nat_registered_at_both_nodes_keep_their_call",
        );
        return;
    }
    runtime()
        .block_on(both())
        .expect("phones registered at both nodes");
}

async fn both() -> Result<()> {
    let mut pair = Pair::start("nat-both", &nat_spec()).await?;
    let (alice, bob) = nat_phones(&pair, true).await?;
    let (alice, call) = call_through_main(&pair, alice, &bob).await?;
    // (Synced by now.) Two views of alice at the stand-by: the flow she opened to it and the main's, each
    // through its own public port of her router.
    let own = source_of(&pair.standby, "alice", true).await?;
    let learned = source_of(&pair.standby, "alice", false).await?;
    eprintln!("[n nat] alice at the stand-by: own flow {own:?}, the main's {learned:?}");
    ensure!(
        own.is_some() && learned.is_some() && own != learned,
        "the stand-by should know both of alice's flows: own {own:?}, the main's {learned:?}"
    );
    pair.main.kill9();
    let killed = Instant::now();
    let report = wait_settled(&pair.standby, Duration::from_secs(20)).await?;
    show_report("n nat both", &report, killed);
    check_report(
        &report,
        &[("recovered", 1), ("nat_own_flow", 2), ("nat_no_flow", 0)],
    )?;
    let new_active = pair.standby.sip;
    let (callers, callees) =
        expect_calls_rebound(vec![alice], vec![bob], &[&call], new_active).await?;
    let (callers, callees) = hang_up_calls(callers, callees, &[&call], new_active).await?;
    ensure_no_protocol_errors(callers.iter().chain(&callees))?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &[&call], "CDR")?;
    Ok(())
}

#[test]
fn phones_behind_nat_registered_at_the_main_only_are_named_in_the_report() {
    const BED: &str = "natmain";
    if !in_bed(BED) {
        natbed::run_in_core(
            BED,
            30,
            "takeover::nat::phones_behind_nat_registered_at_the_main_only_are_named_in_the_report",
        );
        return;
    }
    runtime()
        .block_on(main_only())
        .expect("phones registered at the main only");
}

async fn main_only() -> Result<()> {
    let mut pair = Pair::start("nat-main-only", &nat_spec()).await?;
    let (alice, mut bob) = nat_phones(&pair, false).await?;
    let (mut alice, call) = call_through_main(&pair, alice, &bob).await?;
    pair.main.kill9();
    let killed = Instant::now();
    // The re-binds time out (Timer B) behind the routers; the takeover still settles.
    let report = wait_settled(&pair.standby, Duration::from_secs(30)).await?;
    show_report("n nat main only", &report, killed);
    check_report(
        &report,
        &[("recovered", 0), ("nat_own_flow", 0), ("nat_no_flow", 2)],
    )?;
    let named: Vec<&str> = report["nat_no_flow_parties"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        named.iter().any(|p| p.contains("alice")) && named.iter().any(|p| p.contains("bob")),
        "the report names {named:?}"
    );
    // The routers let nothing from the stand-by in: neither phone saw its re-INVITE.
    for ua in [&mut alice, &mut bob] {
        let from_standby: Vec<String> = ua
            .take_unmatched()
            .iter()
            .filter(|m| m.source.ip() == natbed::STANDBY)
            .map(Incoming::summary)
            .collect();
        ensure!(
            from_standby.is_empty(),
            "{} received from the stand-by through its NAT: {from_standby:?}",
            ua.user()
        );
    }
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure!(
        cdrs.iter()
            .any(|c| c.token == format!("{:016x}", call.token)),
        "no CDR for the lost call: {cdrs:?}"
    );
    Ok(())
}

/// The home routers forget an idle UDP flow after this many seconds in the idle tests.
const SHORT_NAT_TIMEOUT_S: u32 = 4;

#[test]
fn an_idle_phone_behind_nat_stays_reachable_from_the_standby() {
    const BED: &str = "natidle";
    if !in_bed(BED) {
        natbed::run_in_core(
            BED,
            SHORT_NAT_TIMEOUT_S,
            "takeover::nat::an_idle_phone_behind_nat_stays_reachable_from_the_standby",
        );
        return;
    }
    runtime()
        .block_on(idle(2, true))
        .expect("idle phones with NAT keep-alives");
}

#[test]
fn without_keepalives_an_idle_phone_behind_nat_is_lost_to_the_standby() {
    const BED: &str = "natnoka";
    if !in_bed(BED) {
        natbed::run_in_core(
            BED,
            SHORT_NAT_TIMEOUT_S,
            "takeover::nat::without_keepalives_an_idle_phone_behind_nat_is_lost_to_the_standby",
        );
        return;
    }
    runtime()
        .block_on(idle(0, false))
        .expect("idle phones without NAT keep-alives");
}

/// Both phones registered at both nodes stay idle for five NAT timeouts; then the main dies
/// and alice calls bob through the new active, which reaches bob over his flow to it:
/// through his router when `keepalive_s` kept that flow open (`reachable`), not otherwise.
async fn idle(keepalive_s: u32, reachable: bool) -> Result<()> {
    let spec = nat_spec_with(&format!("[registrar]\nnat_keepalive_s = {keepalive_s}\n"));
    let mut pair = Pair::start(
        if reachable {
            "nat-idle"
        } else {
            "nat-idle-off"
        },
        &spec,
    )
    .await?;
    let (mut alice, bob) = nat_phones(&pair, true).await?;
    wait_synced(&pair.standby, &["alice".into(), "bob".into()]).await?;
    // The idle time is the scenario itself: nothing is sent by the phones meanwhile.
    tokio::time::sleep(Duration::from_secs(u64::from(SHORT_NAT_TIMEOUT_S) * 5)).await;
    let pings = pair
        .standby
        .metric("understudy_nat_keepalives_sent_total")
        .await?;
    eprintln!("[n nat idle] the stand-by sent {pings} NAT keep-alives");
    ensure!(
        (pings > 0.0) == reachable,
        "{pings} NAT keep-alives with nat_keepalive_s = {keepalive_s}"
    );
    pair.main.kill9();
    pair.standby
        .wait_status(Duration::from_secs(10), "active", |v| v["role"] == "active")
        .await?;
    answer_n(&bob, 1, &Answer::ok());
    alice.set_server(pair.standby.sip);
    let out = alice.invite("bob")?;
    if reachable {
        let r = alice.wait_final(&out).await?;
        eprintln!(
            "[n nat idle] alice calling bob after the takeover: {} {}",
            r.status, r.reason
        );
        ensure!(
            r.status == 200,
            "bob not reached: {} {}",
            r.status,
            r.reason
        );
        alice.ack(&r)?;
    } else {
        // The call fails at Timer B (64 × T1); its 408 goes back to alice through a flow her
        // router may have forgotten by then (its timeout is shorter), so the stand-by's
        // account is the evidence: the call created, then failed, and bob heard nothing.
        let created = "understudy_calls_total{event=\"created\"}";
        let deadline = Instant::now() + Duration::from_secs(15);
        while pair.standby.metric(created).await? < 1.0
            || pair.standby.metric("understudy_calls").await? > 0.0
        {
            ensure!(Instant::now() < deadline, "the call to bob never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cdrs = stop_and_read_cdrs(&mut pair.standby).await?;
        eprintln!(
            "[n nat idle] without keep-alives: {:?}",
            cdrs.iter().map(|c| &c.end_reason).collect::<Vec<_>>()
        );
        ensure!(
            cdrs.iter().any(|c| c.end_reason == "failed:408"),
            "no failed:408 CDR: {cdrs:?}"
        );
        let mut bob = bob;
        let heard: Vec<String> = bob
            .take_unmatched()
            .iter()
            .filter(|m| m.request().is_some_and(|r| r.method == Method::Invite))
            .map(Incoming::summary)
            .collect();
        ensure!(heard.is_empty(), "bob heard {heard:?} through a closed NAT");
    }
    Ok(())
}

/// Phones per home in the scale test: callers behind home 1, callees behind home 2.
const PHONES_PER_HOME: usize = 250;

#[test]
fn hundreds_of_phones_behind_nat_keep_their_calls() {
    const BED: &str = "natmany";
    if !in_bed(BED) {
        natbed::run_in_core(
            BED,
            30,
            "takeover::nat::hundreds_of_phones_behind_nat_keep_their_calls",
        );
        return;
    }
    runtime()
        .block_on(many())
        .expect("hundreds of phones behind NAT");
}

/// 250 phones behind each of the two routers, each registered at both nodes (1,000
/// REGISTERs through the NATs); every caller calls two callees (500 calls through the main);
/// kill -9 of the main; every call is re-bound over the phones' own flows to the stand-by
/// and hung up there.
async fn many() -> Result<()> {
    let callers = names("nc", PHONES_PER_HOME);
    let callees = names("nd", PHONES_PER_HOME);
    let users = users_of(&[&callers, &callees]);
    let mut spec = nat_spec();
    spec.users = Vec::new();
    let mut pair = Pair::start("nat-many", &spec.with_users(&users)).await?;
    let (ec, ee) = homes_of(&pair, &callers, &callees).await?;
    wait_synced(&pair.standby, &users).await?;
    for ua in &ee {
        answer_n(ua, 2, &Answer::ok());
    }
    let targets: Vec<Vec<String>> = (0..PHONES_PER_HOME)
        .map(|i| {
            vec![
                callees[i].clone(),
                callees[(i + 1) % PHONES_PER_HOME].clone(),
            ]
        })
        .collect();
    let want = 2 * PHONES_PER_HOME;
    let (ec, calls) = set_up_calls(ec, targets, &ee, want).await?;
    let killed = kill_main(&mut pair, want as u64, want as u64).await?;
    let report = wait_settled(&pair.standby, Duration::from_secs(60)).await?;
    show_report("n nat many", &report, killed);
    eprintln!(
        "[n nat many] {} phones behind 2 NATs, {want} calls: {} re-bound over own flows \
         ({} legs), {} legs without a flow, last re-bind {} ms after the takeover started",
        2 * PHONES_PER_HOME,
        num(&report, "recovered"),
        num(&report, "nat_own_flow"),
        num(&report, "nat_no_flow"),
        num(&report, "rebind_ms"),
    );
    check_report(
        &report,
        &[
            ("recovered", want as u64),
            ("nat_own_flow", 2 * want as u64),
            ("nat_no_flow", 0),
        ],
    )?;
    rebound_then_ended_at_the_standby(&mut pair, ec, ee, &calls).await
}
