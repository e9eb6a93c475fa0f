//! Scenario d: the dialog digest.

use super::*;

/// Dialog digest: 200 calls from phones that refuse the dialog query to a trunk that refuses
/// it too. The new active knows the calls from the keep-alives, re-binds them at once, and
/// asks only the trunk (configured `dialog_query = true`), never the phones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_path_rebinds_200_calls_without_notifiers() -> Result<()> {
    let caller_names = names("gina", 10);
    let per_caller = 20;
    let pstn = Ua::bind("pstn").await?;
    let spec = PairSpec {
        trunks: vec![TrunkSpec {
            dialog_query: true,
            ..TrunkSpec::new("pstn", pstn.addr(), "9")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("digest", &spec).await?;
    pstn.set_server(pair.main.sip);
    pstn.set_policy(|p| p.dialog_query = QueryReply::Refuse(489));
    answer_n(&pstn, caller_names.len() * per_caller, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    for ua in &callers {
        ua.set_policy(|p| p.dialog_query = QueryReply::Refuse(489));
    }
    // The stand-by knows the phones (so not asking them is a choice, not ignorance).
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = numbers(caller_names.len(), per_caller, |i, k| {
        format!("9{i:02}{k:03}")
    });
    let callees = vec![pstn];
    let (callers, calls) = set_up_calls(callers, targets, &callees, 200).await?;
    let report = kill_and_settle(&mut pair, 200, 200, Duration::from_secs(20), "d digest").await?;
    let via_digest = num(&report, "recovered_via_digest");
    ensure!(
        via_digest >= 199 && num(&report, "recovered") >= 199,
        "only {via_digest} calls re-bound from the digest:\n{report:#}"
    );
    check_report(
        &report,
        &[
            // Every endpoint is asked (the digest may miss the calls of its last interval):
            // the 10 callers and the trunk, none of which is a notifier.
            ("endpoints", 11),
            ("queried", 11),
            ("not_notifiers", 11),
            ("failed", 0),
            ("ended", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let recovered: HashSet<String> = pair
        .standby
        .calls()
        .await?
        .iter()
        .filter(|c| c["recovered"] == true)
        .filter_map(|c| c["token"].as_str().map(str::to_string))
        .collect();
    let rebound: Vec<&Call> = calls
        .iter()
        .filter(|c| recovered.contains(&format!("{:016x}", c.token)))
        .collect();
    ensure!(
        rebound.len() as u64 == num(&report, "recovered"),
        "/calls shows {} recovered calls, the report {}",
        rebound.len(),
        num(&report, "recovered")
    );
    let (mut callers, mut callees) =
        expect_calls_rebound(callers, callees, &rebound, new_active).await?;
    for ua in callers.iter_mut() {
        let (queries, resets) = queries_and_resets(ua);
        // One query (it answers 489: not a notifier), and never a reset: fallback is none.
        ensure!(
            queries == 1 && resets == 0,
            "{} got {queries} queries and {resets} resets (want 1 query, no reset)",
            ua.user()
        );
    }
    let (queries, _) = queries_and_resets(&mut callees[0]);
    ensure!(
        queries == 1,
        "the dialog_query trunk was asked {queries} times (want 1)"
    );
    let (_callers, _callees) = hang_up_calls(callers, callees, &rebound, new_active).await?;
    let cdrs = cdrs_when_idle(&mut pair.standby).await?;
    ensure_recovered_normal(&cdrs, &rebound, "CDR")
}
