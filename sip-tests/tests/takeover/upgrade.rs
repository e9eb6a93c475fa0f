//! Scenario u: a rolling upgrade. The main still runs the previous release (pair protocol
//! version 1: unsigned, MAC-only keep-alives, the digest on the keep-alives, reg NOTIFYs
//! unauthenticated); the stand-by is already upgraded and admits it with
//! `pair.accept_v1 = true`. The pair forms, the stand-by learns the registrations and the
//! calls, and when the old main dies the new build takes every call over.
//!
//! The previous build is named by `UNDERSTUDY_OLD_BIN`; `sip-tests/upgrade.sh` builds wave
//! 1 (commit e0aa50b) and runs this test with it. Without the variable the test has nothing
//! to compare against and says so.

use std::path::PathBuf;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_standby_takes_over_from_a_main_of_the_previous_release() -> Result<()> {
    let Some(old) = std::env::var_os("UNDERSTUDY_OLD_BIN").map(PathBuf::from) else {
        eprintln!("UNDERSTUDY_OLD_BIN is not set: run sip-tests/upgrade.sh for this scenario");
        return Ok(());
    };
    ensure!(old.exists(), "{} does not exist", old.display());
    let users = ten_call_users("up");
    let spec = PairSpec {
        binaries: [Some(old), None],
        pair_extra: [String::new(), "accept_v1 = true".to_string()],
        ..PairSpec::default()
    }
    .with_users(&users);
    let mut pair = Pair::start("upgrade", &spec).await?;
    let (ec, ee, calls) = ten_calls(&pair, "up").await?;
    // The old main announces no digest version: the new stand-by would answer in version 1.
    let status = pair.standby.get_json("/status").await?;
    ensure!(
        status["digest"]["version"] == 1,
        "digest version towards the old main: {}",
        status["digest"]
    );
    let killed = kill_main(&mut pair, 10, 10).await?;
    let report = wait_settled(&pair.standby, Duration::from_secs(15)).await?;
    show_report("u upgrade", &report, killed);
    check_report(&report, &[("recovered", 10)])?;
    rebound_then_ended_at_the_standby(&mut pair, ec, ee, &calls).await
}
