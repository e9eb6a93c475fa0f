//! Races: CANCEL crossing the callee's 200 (RFC 3261 §9.1, §15), and BYE crossing a
//! re-INVITE or an INFO (§15.1.2: the pending requests of an ending dialog are still
//! answered). Each round sends both requests back to back from two sockets, alternating which
//! goes first, so the server sees both orders. Whatever the order, the call must end cleanly:
//! no hang, no call and no server transaction left.

use std::time::Duration;

use anyhow::Result;
use sip_tests::{Answer, Ua};
use understudy::sip::{Method, SipMessage};

use crate::common::alice_and_bob;

const ROUNDS: usize = 6;

/// How long a final response to a request may take on loopback before it counts as missing.
const FINAL_WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn cancel_crossing_200_ends_cleanly_either_way() -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let out = alice.invite("bob")?;
        let inv = bob.expect_new_invite().await?;
        let b_call = inv.call_id()?.to_string();
        bob.reply(&inv, 180)?;
        alice
            .expect_status(&out.call_id, Method::Invite, 180)
            .await?;

        if round % 2 == 0 {
            bob.reply(&inv, 200)?;
            alice.cancel(&out)?;
        } else {
            alice.cancel(&out)?;
            bob.reply(&inv, 200)?;
        }

        let cancel_resp = alice.expect_final(&out.call_id, Method::Cancel).await?;
        assert!(
            matches!(cancel_resp.status, 200 | 481),
            "round {round}: CANCEL answered {}",
            cancel_resp.status
        );
        let fin = alice.wait_final(&out).await?;
        match fin.status {
            200 => {
                // The 200 won: the caller has a call (ACKed) and hangs up.
                bob.expect_request_in(&b_call, Method::Ack).await?;
                let d = Ua::dialog_of(&out, &fin);
                let r = alice.bye(&d).await?;
                assert_eq!(r.status, 200, "round {round}: BYE after the 200 won");
                bob.expect_request_in(&b_call, Method::Bye).await?;
            }
            487 => {
                // The CANCEL won: the B2BUA must ACK the callee's 200 and BYE it.
                bob.expect_request_in(&b_call, Method::Ack).await?;
                bob.expect_request_in(&b_call, Method::Bye).await?;
            }
            s => panic!("round {round}: caller got {s} {}", fin.reason),
        }
        assert!(
            bob.live_dialogs().is_empty(),
            "round {round}: bob still has a dialog"
        );
        assert!(
            alice.live_dialogs().is_empty(),
            "round {round}: alice still has a dialog"
        );
        server
            .wait_counts(Duration::from_secs(2), "without calls", |c| c.calls == 0)
            .await?;
        outcomes.push(fin.status);
    }
    println!("CANCEL/200 crossing outcomes (final status to the caller): {outcomes:?}");
    server.wait_idle().await?;

    let cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), ROUNDS, "{cdrs:?}");
    for (cdr, status) in cdrs.iter().zip(&outcomes) {
        let want = if *status == 200 {
            "normal"
        } else {
            "cancelled"
        };
        assert_eq!(cdr.end_reason, want, "{cdr:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bye_crossing_reinvite_ends_cleanly() -> Result<()> {
    bye_crossing(Method::Invite).await
}

#[tokio::test]
async fn bye_crossing_info_ends_cleanly() -> Result<()> {
    bye_crossing(Method::Info).await
}

/// alice sends `method` in the dialog while bob sends BYE.
async fn bye_crossing(method: Method) -> Result<()> {
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    let mut problems = Vec::new();
    for round in 0..ROUNDS {
        bob.answer_next_invite(Answer::ok());
        let a_d = alice.call("bob").await?;
        let inv = bob.expect_new_invite().await?;
        bob.expect_request_in(inv.call_id()?, Method::Ack).await?;
        let b_d = bob.dialog_for(&inv).expect("bob answered");

        let request_first = round % 2 == 0;
        let (re, bye) = if request_first {
            let re = alice.send_in_dialog(&a_d, method.clone())?;
            (re, bob.send_in_dialog(&b_d, Method::Bye)?)
        } else {
            let bye = bob.send_in_dialog(&b_d, Method::Bye)?;
            (alice.send_in_dialog(&a_d, method.clone())?, bye)
        };
        let order = if request_first {
            format!("{method} sent first")
        } else {
            "BYE sent first".to_string()
        };

        let bye_resp = bob.expect_final(&b_d.call_id, Method::Bye).await?;
        assert_eq!(bye_resp.status, 200, "round {round} ({order}): bob's BYE");
        assert_eq!(bye_resp.cseq()?.seq, bye.cseq()?.seq);
        alice
            .expect_request_in(&a_d.call_id, Method::Bye)
            .await
            .map_err(|e| e.context(format!("round {round} ({order}): alice never got the BYE")))?;
        // Every request gets a final response (RFC 3261 §8.2.6), even when its dialog ends.
        let re_resp = alice
            .expect_within(FINAL_WAIT, "final response to the crossing request", |m| {
                m.is_response_to(&a_d.call_id, &method)
                    && m.response().is_some_and(|r| {
                        r.status >= 200
                            && r.cseq()
                                .is_ok_and(|c| c.seq == re.cseq().map(|c| c.seq).unwrap_or(0))
                    })
            })
            .await;
        match re_resp {
            Ok(m) => println!(
                "round {round} ({order}): {method} answered {}",
                m.response().map_or(0, |r| r.status)
            ),
            Err(e) => problems.push(format!(
                "round {round} ({order}): alice's {method} (CSeq {}) got no final response: {e}",
                re.cseq()?.seq
            )),
        }
        assert!(alice.live_dialogs().is_empty() && bob.live_dialogs().is_empty());
        server
            .wait_counts(Duration::from_secs(2), "without calls", |c| c.calls == 0)
            .await?;
    }
    if let Err(e) = server.wait_idle().await {
        problems.push(e.to_string());
    }
    assert!(problems.is_empty(), "BYE crossing {method}: {problems:#?}");
    let cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), ROUNDS);
    assert!(cdrs.iter().all(|c| c.end_reason == "normal"), "{cdrs:?}");
    Ok(())
}
