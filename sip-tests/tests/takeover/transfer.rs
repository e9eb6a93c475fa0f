//! Transfers and a takeover: a blind-transferred call, an attended-transferred call (whose
//! legs carry the tags of two calls) and a call whose transfer is still ringing at the kill
//! are all kept by the stand-by, re-bound, and end normally through it; the CDRs the new
//! active writes keep the transfer links (`transfer_of`) the digest carried.

use crate::transfer::{escape, notifies_until_done, replaces_of};

use super::*;

/// The one live dialog `ua` has.
fn only_dialog(ua: &Ua) -> Result<DialogId> {
    let live = ua.live_dialogs();
    ensure!(live.len() == 1, "{} has {} dialogs", ua.user(), live.len());
    Ok(live[0].id.clone())
}

/// The main's digest is acknowledged by the stand-by (nothing left to send).
async fn digest_delivered(main: &Node) -> Result<()> {
    main.wait_status(Duration::from_secs(5), "its digest delivered", |v| {
        v["digest"]["backlog"].as_u64() == Some(0)
    })
    .await?;
    Ok(())
}

/// Issue acceptance: each kind of transfer across a kill -9 of the main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transferred_calls_and_a_transfer_in_progress_survive_a_takeover() -> Result<()> {
    let names: Vec<String> = [
        "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan",
    ]
    .map(String::from)
    .to_vec();
    let spec = PairSpec::default().with_users(&names);
    let mut pair = Pair::start("transfer", &spec).await?;
    let mut uas = phones(&names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &names).await?;
    let mut by_name: HashMap<String, Ua> =
        uas.drain(..).map(|u| (u.user().to_string(), u)).collect();
    let mut take = |n: &str| by_name.remove(n).context(n.to_string());
    let (mut alice, mut bob, mut carol) = (take("alice")?, take("bob")?, take("carol")?);
    let (mut dave, mut erin, mut frank) = (take("dave")?, take("erin")?, take("frank")?);
    let (mut gina, mut hank, mut ivan) = (take("gina")?, take("hank")?, take("ivan")?);
    for ua in [&bob, &carol, &erin, &frank, &hank] {
        ua.answer_next_invite(Answer::ok());
    }
    ivan.answer_next_invite(Answer::ring());

    // 1. Blind: bob transfers alice to carol.
    let a1 = alice.call("bob").await?;
    let b1 = only_dialog(&bob)?;
    ensure!(
        bob.refer(&b1, "<sip:carol@pbx.local>").await?.status == 202,
        "bob's REFER"
    );
    let n = notifies_until_done(&mut bob, &b1.call_id).await?;
    ensure!(
        n.last().map(String::as_str) == Some("SIP/2.0 200 OK"),
        "{n:?}"
    );
    let c1 = only_dialog(&carol)?;

    // 2. Attended: erin consults frank, then transfers dave to him.
    let d2 = dave.call("erin").await?;
    let e2 = only_dialog(&erin)?;
    let e3 = erin.call("frank").await?;
    let f3 = only_dialog(&frank)?;
    let refer_to = format!(
        "<sip:frank@pbx.local?Replaces={}>",
        escape(&replaces_of(&e3))
    );
    ensure!(
        erin.refer(&e2, &refer_to).await?.status == 202,
        "erin's REFER"
    );
    let n = notifies_until_done(&mut erin, &e2.call_id).await?;
    ensure!(
        n.last().map(String::as_str) == Some("SIP/2.0 200 OK"),
        "{n:?}"
    );

    // 3. In progress: hank transfers gina to ivan, who is still ringing at the kill.
    let g4 = gina.call("hank").await?;
    let h4 = only_dialog(&hank)?;
    ensure!(
        hank.refer(&h4, "<sip:ivan@pbx.local>").await?.status == 202,
        "hank's REFER"
    );
    let _ringing = ivan.expect_new_invite().await?;

    digest_delivered(&pair.main).await?;
    let status = pair.main.get_json("/status").await?;
    ensure!(
        status["digest"]["version"] == 2,
        "the main writes digest version 2 to a peer of this build: {}",
        status["digest"]
    );
    let report = kill_and_settle(&mut pair, 3, 3, Duration::from_secs(15), "transfer").await?;
    check_report(
        &report,
        &[
            ("calls_found", 3),
            ("recovered", 3),
            ("orphaned", 0),
            ("failed", 0),
        ],
    )?;
    let standby = pair.standby.sip;
    for (ua, id) in [
        (&alice, &a1),
        (&carol, &c1),
        (&dave, &d2),
        (&frank, &f3),
        (&gina, &g4),
        (&hank, &h4),
    ] {
        let d = ua.dialog(id).context("dialog")?;
        ensure!(
            d.last_reinvite_from == Some(standby),
            "{}'s leg was not re-bound by the stand-by",
            ua.user()
        );
    }

    // Hang-ups through the new active: from the target (1), from the joined party whose
    // tag names the consultation call (2), from the transferor of the unfinished transfer (3).
    ensure!(carol.bye(&c1).await?.status == 200, "carol's BYE");
    alice.expect_request_in(&a1.call_id, Method::Bye).await?;
    ensure!(frank.bye(&f3).await?.status == 200, "frank's BYE");
    dave.expect_request_in(&d2.call_id, Method::Bye).await?;
    ensure!(hank.bye(&h4).await?.status == 200, "hank's BYE");
    gina.expect_request_in(&g4.call_id, Method::Bye).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure!(
        cdrs.len() == 3 && cdrs.iter().all(|c| c.recovered && c.end_reason == "normal"),
        "CDRs at the new active: {cdrs:#?}"
    );
    // The parties now in the calls: the new active found them from the digest. (The part
    // before each transfer has its CDR at the old active, under the same token.)
    // The digest (version 2) carried the transfer link: each later part names the
    // transferor's leg it replaced, as it would have at the old active.
    for (who, transferor_leg) in [("carol", &b1.call_id), ("frank", &e2.call_id)] {
        ensure!(
            cdrs.iter().any(|c| c.callee.contains(who)
                && c.transfer_of.as_deref() == Some(transferor_leg.as_str())),
            "no CDR names {who} with transfer_of {transferor_leg}: {cdrs:#?}"
        );
    }
    ensure!(
        cdrs.iter()
            .any(|c| c.callee.contains("hank") && c.transfer_of.is_none()),
        "the unfinished transfer's call is no transfer: {cdrs:#?}"
    );
    Ok(())
}
