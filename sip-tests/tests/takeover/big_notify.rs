//! Scenario k: a big dialog report over TCP.

use super::*;

/// A trunk on TCP with `dialog_query = true` carrying 150 calls answers the query with one
/// NOTIFY of about 90 KB (more than a UDP datagram can hold); with no digest, that report
/// and the phones' own reports are how all 150 calls are found and re-bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_trunk_reports_150_calls_in_one_notify() -> Result<()> {
    let caller_names = names("pam", 10);
    let per_caller = 15;
    let total = caller_names.len() * per_caller;
    let trunk = Ua::bind_tcp("bigtrunk").await?;
    let spec = PairSpec {
        dialog_digest: false,
        trunks: vec![TrunkSpec {
            tcp: true,
            dialog_query: true,
            ..TrunkSpec::new("bigtrunk", trunk.addr(), "5")
        }],
        ..PairSpec::default()
    }
    .with_users(&caller_names);
    let mut pair = Pair::start("bignotify", &spec).await?;
    trunk.set_server_tcp(pair.main.sip);
    answer_n(&trunk, total, &Answer::ok());
    let callers = phones(&caller_names, pair.main.sip, false).await?;
    wait_synced(&pair.standby, &caller_names).await?;
    let targets = numbers(caller_names.len(), per_caller, |i, k| format!("5{i}{k:02}"));
    let callees = vec![trunk];
    let (callers, calls) = set_up_calls(callers, targets, &callees, total).await?;
    let report_size = callees[0].dialog_info().len();
    ensure!(
        report_size > 65_535,
        "the trunk's report is only {report_size} bytes"
    );
    let report = kill_and_settle(
        &mut pair,
        total as u64,
        0,
        Duration::from_secs(15),
        "k big notify",
    )
    .await?;
    eprintln!("[k big notify] the trunk's dialog-info is {report_size} bytes");
    check_report(
        &report,
        &[
            ("endpoints", 11),
            ("answered", 11),
            ("recovered", total as u64),
            ("recovered_via_query", total as u64),
            ("orphaned", 0),
        ],
    )?;
    let new_active = pair.standby.sip;
    let all: Vec<&Call> = calls.iter().collect();
    let (callers, callees) = expect_calls_rebound(callers, callees, &all, new_active).await?;
    let (_callers, _callees) = hang_up_calls(callers, callees, &all, new_active).await?;
    wait_no_calls(&pair.standby).await
}
