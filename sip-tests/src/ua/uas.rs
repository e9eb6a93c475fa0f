//! What the UA answers: auto-answer plans for the next INVITEs, answering an INVITE the
//! test holds, and replying by hand to any request the policy leaves to the test.

use anyhow::{Result, bail};
use bytes::Bytes;
use understudy::sip::{HeaderName, Method, Request, SipMessage};

use super::Ua;
use super::answer::{self, Answer};
use super::build::branch_of;
use super::dialog::DialogId;
use super::recv::next_sdp;

impl Ua {
    /// Answer the next new INVITE that arrives with `plan` (plans queue up in order). The
    /// INVITE is still queued for `expect`.
    pub fn answer_next_invite(&self, plan: Answer) {
        self.shared.lock().plans.push_back(plan);
    }

    /// Play `plan` on an INVITE we received (and that no plan answered). Returns the dialog
    /// when we answered 2xx, `None` when the final response was not a 2xx or a CANCEL got
    /// there first.
    pub async fn answer(&self, invite: &Request, plan: Answer) -> Option<DialogId> {
        let key = (branch_of(invite), Method::Invite.to_string());
        answer::play(self.shared.clone(), key, plan).await
    }

    /// Reply `status` to a request we received. 2xx answers to INVITE/UPDATE carry SDP.
    /// Returns `false` when the request already had a final response (e.g. CANCEL won).
    pub fn reply(&self, req: &Request, status: u16) -> Result<bool> {
        self.reply_with(req, status, &[])
    }

    /// Reply with extra headers.
    pub fn reply_with(
        &self,
        req: &Request,
        status: u16,
        extra: &[(HeaderName, String)],
    ) -> Result<bool> {
        let sh = &self.shared;
        let key = (branch_of(req), req.method.to_string());
        let mut st = sh.lock();
        if !st.server_txs.contains_key(&key) {
            bail!("no server transaction for {} {}", req.method, req.uri);
        }
        let sdp_wanted =
            (200..300).contains(&status) && matches!(req.method, Method::Invite | Method::Update);
        let body = if !sdp_wanted {
            None
        } else if let Some(tag) = req.to_tag() {
            let id = DialogId {
                call_id: req.call_id()?.to_string(),
                local_tag: tag,
                remote_tag: req.from_tag().unwrap_or_default(),
            };
            if req.method == Method::Invite
                && req.body.is_empty()
                && let Some(d) = st.dialogs.get_mut(&id)
            {
                // An offer in our 2xx to an offerless re-INVITE: the answer is due in the ACK.
                d.awaiting_answer = true;
            }
            let offer = (!req.body.is_empty()).then_some(&req.body[..]);
            next_sdp(sh, &mut st, &id, offer)
        } else {
            Some(Bytes::from(crate::sdp::body(sh.local, &sh.user, 1)))
        };
        Ok(sh.respond(
            &mut st,
            &key,
            status,
            body.map(|b| ("application/sdp", b)),
            extra,
        ))
    }

    /// The dialog we have with the sender of `invite` (an INVITE we answered with a To tag).
    pub fn dialog_for(&self, invite: &Request) -> Option<DialogId> {
        let key = (branch_of(invite), Method::Invite.to_string());
        let st = self.shared.lock();
        let tag = st.server_txs.get(&key)?.to_tag.clone()?;
        Some(DialogId {
            call_id: invite.call_id().ok()?.to_string(),
            local_tag: tag,
            remote_tag: invite.from_tag()?,
        })
    }
}
