//! How the UA answers an INVITE: provisional responses, an optional delay, then a final
//! response (or none, to keep ringing until CANCEL). Used for auto-answer plans
//! ([`super::Ua::answer_next_invite`]) and for answering an INVITE the test already holds
//! ([`super::Ua::answer`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::dialog::DialogId;
use understudy::sip::SipMessage;

use super::state::{Shared, State, TxKey};

/// A script for answering one INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Provisional responses sent at once, in order (e.g. `[180]`).
    pub provisional: Vec<u16>,
    /// Wait this long after the provisionals before the final response.
    pub delay: Duration,
    /// The final status; `None` rings forever (until CANCEL).
    pub status: Option<u16>,
    /// SDP session name in our answer (default: the UA's user name).
    pub sdp_name: Option<String>,
}

impl Answer {
    /// 180, then 200 with SDP.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// 180, then `code`.
    pub fn status(code: u16) -> Self {
        Self {
            provisional: vec![180],
            delay: Duration::ZERO,
            status: Some(code),
            sdp_name: None,
        }
    }

    /// 180, then 486 Busy Here.
    pub fn busy() -> Self {
        Self::status(486)
    }

    /// 180 and no final response.
    pub fn ring() -> Self {
        Self {
            status: None,
            ..Self::ok()
        }
    }

    /// Wait `delay` between the provisionals and the final response.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Send no provisional response.
    pub fn without_ringing(mut self) -> Self {
        self.provisional.clear();
        self
    }

    /// Use `name` as the SDP session name of the answer.
    pub fn with_sdp_name(mut self, name: &str) -> Self {
        self.sdp_name = Some(name.to_string());
        self
    }
}

/// Send the provisional responses of `plan` on the INVITE server transaction `key`.
pub(crate) fn provisionals(shared: &Shared, st: &mut State, key: &TxKey, plan: &Answer) {
    for &p in &plan.provisional {
        shared.respond(st, key, p, None, &[]);
    }
}

/// Send the final response of `plan` unless the transaction already has one (a CANCEL got
/// there first). Returns the dialog when it was a 2xx.
pub(crate) fn finish(
    shared: &Shared,
    st: &mut State,
    key: &TxKey,
    plan: &Answer,
) -> Option<DialogId> {
    let status = plan.status?;
    let body = (200..300).contains(&status).then(|| {
        let name = plan.sdp_name.clone().unwrap_or_else(|| shared.user.clone());
        Bytes::from(crate::sdp::body(shared.local, &name, 1))
    });
    let sent = shared.respond(st, key, status, body.map(|b| ("application/sdp", b)), &[]);
    if !sent || !(200..300).contains(&status) {
        return None;
    }
    let tx = st.server_txs.get(key)?;
    Some(DialogId {
        call_id: tx.request.call_id().ok()?.to_string(),
        local_tag: tx.to_tag.clone()?,
        remote_tag: tx.request.from_tag()?,
    })
}

/// Start `plan` from the receive task: everything without a delay is sent at once, in order
/// with the task's other answers; a delayed final response is sent by a task of its own.
pub(crate) fn start(shared: &Arc<Shared>, st: &mut State, key: TxKey, plan: Answer) {
    provisionals(shared, st, &key, &plan);
    if plan.delay.is_zero() {
        finish(shared, st, &key, &plan);
        return;
    }
    let sh = shared.clone();
    let task = tokio::spawn(async move {
        // The delay is the behaviour under test (a phone ringing), not a wait for an event.
        tokio::time::sleep(plan.delay).await;
        let mut st = sh.lock();
        finish(&sh, &mut st, &key, &plan);
    });
    st.tasks.push(task.abort_handle());
}

/// Play `plan` on the INVITE server transaction `key`, awaiting its delay.
pub(crate) async fn play(shared: Arc<Shared>, key: TxKey, plan: Answer) -> Option<DialogId> {
    provisionals(&shared, &mut shared.lock(), &key, &plan);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    finish(&shared, &mut shared.lock(), &key, &plan)
}
