//! Races: CANCEL crossing the callee's 200 (RFC 3261 §9.1, §15), and BYE crossing a
//! re-INVITE. Each round sends both requests back to back from two sockets, alternating
//! which goes first, so the server sees both orders. Whatever the order, the call must end
//! cleanly: no hang, no call and no server transaction left.

use std::time::Duration;

use anyhow::Result;
use sip_tests::{Answer, Ua};
use understudy::sip::{Method, SipMessage};

use crate::common::alice_and_bob;

const ROUNDS: usize = 6;

/// How long a final response to a request may take on loopback before it counts as missing.
const REINVITE_WAIT: Duration = Duration::from_secs(2);

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
    let (server, mut alice, mut bob) = alice_and_bob().await?;
    let mut problems = Vec::new();
    for round in 0..ROUNDS {
        bob.answer_next_invite(Answer::ok());
        let a_d = alice.call("bob").await?;
        let inv = bob.expect_new_invite().await?;
        bob.expect_request_in(inv.call_id()?, Method::Ack).await?;
        let b_d = bob.dialog_for(&inv).expect("bob answered");

        let reinvite_first = round % 2 == 0;
        let (re, bye) = if reinvite_first {
            let re = alice.send_in_dialog(&a_d, Method::Invite)?;
            (re, bob.send_in_dialog(&b_d, Method::Bye)?)
        } else {
            let bye = bob.send_in_dialog(&b_d, Method::Bye)?;
            (alice.send_in_dialog(&a_d, Method::Invite)?, bye)
        };
        let order = if reinvite_first {
            "re-INVITE sent first"
        } else {
            "BYE sent first"
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
            .expect_within(REINVITE_WAIT, "final response to the re-INVITE", |m| {
                m.is_response_to(&a_d.call_id, &Method::Invite)
                    && m.response().is_some_and(|r| {
                        r.status >= 200
                            && r.cseq()
                                .is_ok_and(|c| c.seq == re.cseq().map(|c| c.seq).unwrap_or(0))
                    })
            })
            .await;
        match re_resp {
            Ok(m) => println!(
                "round {round} ({order}): re-INVITE answered {}",
                m.response().map_or(0, |r| r.status)
            ),
            Err(_) => problems.push(format!(
                "round {round} ({order}): alice's re-INVITE (CSeq {}) got no final response within {REINVITE_WAIT:?}",
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
    assert!(problems.is_empty(), "BYE crossing re-INVITE: {problems:#?}");
    let cdrs = server.stop().await?;
    assert_eq!(cdrs.len(), ROUNDS);
    assert!(cdrs.iter().all(|c| c.end_reason == "normal"), "{cdrs:?}");
    Ok(())
}
