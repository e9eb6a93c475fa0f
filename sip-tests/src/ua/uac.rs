//! What the UA starts: REGISTER, INVITE (with SDP), CANCEL, BYE, re-INVITE and other
//! requests inside a dialog, and OPTIONS. Challenges (401/407) are answered by the receive
//! task when the UA has a password, so a verb's final response is the one after auth.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use understudy::sip::{HeaderName, Method, Request, Response, SipMessage, new_tag};

use super::Ua;
use super::build::{NewRequest, branch_of, cancel_for, set_body};
use super::dialog::{DialogId, DialogState};
use super::recv::next_sdp;
use super::state::{ClientTx, Peer, Shared, State};

/// An INVITE we sent outside a dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Call-ID.
    pub call_id: String,
    /// Our From tag.
    pub local_tag: String,
    /// Request-URI.
    pub uri: String,
}

fn register_tx(st: &mut State, req: &Request, dest: Peer) {
    st.client_txs.insert(
        (branch_of(req), req.method.to_string()),
        ClientTx {
            request: req.clone(),
            dest,
            seen: Default::default(),
            auth_tried: false,
        },
    );
}

impl Shared {
    fn server(&self, st: &State) -> Result<Peer> {
        st.server.context("the UA has no server (call set_server)")
    }

    fn next_out_cseq(st: &mut State, call_id: &str) -> u32 {
        let n = st.out_cseq.entry(call_id.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

impl Ua {
    /// A full URI for `target`: kept if it has a scheme, else `sip:target@pbx.local`.
    pub fn uri_for(&self, target: &str) -> String {
        if target.contains(':') {
            target.to_string()
        } else {
            format!("sip:{target}@{}", self.shared.domain)
        }
    }

    fn call_id(&self) -> String {
        format!("{:016x}@{}", rand::random::<u64>(), self.shared.local.ip())
    }

    /// Send a request outside a dialog and return it; nothing is awaited.
    pub fn send_new(
        &self,
        method: Method,
        uri: &str,
        call_id: &str,
        body: Option<(&str, Bytes)>,
        extra: &[(HeaderName, String)],
    ) -> Result<Request> {
        let sh = &self.shared;
        let mut st = sh.lock();
        let dest = sh.server(&st)?;
        let cseq = Shared::next_out_cseq(&mut st, call_id);
        let aor = sh.aor();
        let from = format!("<{aor}>;tag={}", new_tag());
        let to = if method == Method::Register {
            format!("<{aor}>")
        } else {
            format!("<{uri}>")
        };
        let contact = sh.contact();
        let mut req = NewRequest {
            method: method.clone(),
            uri,
            from: &from,
            to: &to,
            call_id,
            cseq,
            contact: matches!(method, Method::Invite | Method::Subscribe)
                .then_some(contact.as_str()),
            route: &[],
        }
        .build(sh.local, dest.transport);
        for (n, v) in extra {
            req.headers.push(n.clone(), v.clone());
        }
        if let Some((ct, b)) = body {
            set_body(&mut req, ct, b);
        }
        register_tx(&mut st, &req, dest);
        if method == Method::Invite {
            st.invites
                .insert(call_id.to_string(), (branch_of(&req), "INVITE".into()));
        }
        sh.send(&req.to_bytes(), dest);
        Ok(req)
    }

    async fn wait_final_from(
        &mut self,
        call_id: &str,
        method: Method,
        min_seq: u32,
    ) -> Result<Response> {
        let what = format!("final response to {method} {min_seq}+ in {call_id}");
        let m = self
            .expect(&what, |m| {
                m.is_response_to(call_id, &method)
                    && m.response().is_some_and(|r| {
                        r.status >= 200 && r.cseq().is_ok_and(|c| c.seq >= min_seq)
                    })
            })
            .await?;
        Ok(m.response().cloned().unwrap_or_else(|| unreachable!()))
    }

    /// REGISTER our contact for 3600 s; returns the final response (after auth).
    pub async fn register(&mut self) -> Result<Response> {
        let c = format!("<{}>", self.contact_uri());
        self.register_with(3600, &[c]).await
    }

    /// REGISTER the given Contact values with `Expires: expires`.
    pub async fn register_with(&mut self, expires: u32, contacts: &[String]) -> Result<Response> {
        let call_id = format!("reg-{}@{}", self.shared.user, self.shared.local);
        let uri = format!("sip:{}", self.shared.domain);
        let mut extra: Vec<(HeaderName, String)> = contacts
            .iter()
            .map(|c| (HeaderName::Contact, c.clone()))
            .collect();
        extra.push((HeaderName::Expires, expires.to_string()));
        let req = self.send_new(Method::Register, &uri, &call_id, None, &extra)?;
        let seq = req.cseq()?.seq;
        self.wait_final_from(&call_id, Method::Register, seq).await
    }

    /// Remove our contact (`Expires: 0`).
    pub async fn unregister(&mut self) -> Result<Response> {
        let c = format!("<{}>", self.contact_uri());
        self.register_with(0, &[c]).await
    }

    /// OPTIONS to `uri` outside a dialog; returns the final response.
    pub async fn options(&mut self, uri: &str) -> Result<Response> {
        let call_id = self.call_id();
        self.send_new(Method::Options, uri, &call_id, None, &[])?;
        self.wait_final_from(&call_id, Method::Options, 1).await
    }

    /// Send an INVITE with an SDP offer (session name = user name) to `target` (a user part
    /// or a URI). Returns at once; read the responses with [`Self::wait_final`] or the
    /// `expect_*` methods.
    pub fn invite(&self, target: &str) -> Result<Outgoing> {
        let sdp = crate::sdp::body(self.shared.local, &self.shared.user, 1);
        self.invite_with(target, Some(sdp), &[])
    }

    /// Send an INVITE with an optional SDP body and extra headers.
    pub fn invite_with(
        &self,
        target: &str,
        sdp: Option<String>,
        extra: &[(HeaderName, String)],
    ) -> Result<Outgoing> {
        let uri = self.uri_for(target);
        let call_id = self.call_id();
        let body = sdp.map(|s| ("application/sdp", Bytes::from(s)));
        let req = self.send_new(Method::Invite, &uri, &call_id, body, extra)?;
        Ok(Outgoing {
            call_id,
            local_tag: req.from_tag().unwrap_or_default(),
            uri,
        })
    }

    /// The final response to our INVITE (after auth).
    pub async fn wait_final(&mut self, out: &Outgoing) -> Result<Response> {
        self.expect_final(&out.call_id, Method::Invite).await
    }

    /// INVITE `target` and wait for a 2xx (ACKed automatically); returns the dialog.
    pub async fn call(&mut self, target: &str) -> Result<DialogId> {
        let out = self.invite(target)?;
        let r = self.wait_final(&out).await?;
        if !(200..300).contains(&r.status) {
            bail!(
                "{} calling {target}: got {} {}",
                self.user(),
                r.status,
                r.reason
            );
        }
        Ok(Self::dialog_of(&out, &r))
    }

    /// The dialog a response to our INVITE created.
    pub fn dialog_of(out: &Outgoing, resp: &Response) -> DialogId {
        DialogId {
            call_id: out.call_id.clone(),
            local_tag: out.local_tag.clone(),
            remote_tag: resp.to_tag().unwrap_or_default(),
        }
    }

    /// Send a CANCEL for the current transaction of our INVITE.
    pub fn cancel(&self, out: &Outgoing) -> Result<Request> {
        let sh = &self.shared;
        let mut st = sh.lock();
        let key = st
            .invites
            .get(&out.call_id)
            .cloned()
            .context("no INVITE sent with this Call-ID")?;
        let tx = st.client_txs.get(&key).context("INVITE transaction gone")?;
        let (c, dest) = (cancel_for(&tx.request), tx.dest);
        register_tx(&mut st, &c, dest);
        sh.send(&c.to_bytes(), dest);
        Ok(c)
    }

    /// Send a request in dialog `id` (BYE marks the dialog terminating). SDP is added to
    /// INVITE and UPDATE. Returns the request; nothing is awaited.
    pub fn send_in_dialog(&self, id: &DialogId, method: Method) -> Result<Request> {
        self.send_in_dialog_with(id, method, &[])
    }

    /// [`Ua::send_in_dialog`] with more headers.
    pub fn send_in_dialog_with(
        &self,
        id: &DialogId,
        method: Method,
        extra: &[(HeaderName, String)],
    ) -> Result<Request> {
        let sh = &self.shared;
        let mut st = sh.lock();
        let body = if matches!(method, Method::Invite | Method::Update) {
            next_sdp(sh, &mut st, id, None)
        } else {
            None
        };
        let contact = sh.contact();
        let d = st.dialogs.get_mut(id).context("no such dialog")?;
        let mut req = d.request(method.clone(), sh.local, &contact);
        let dest = d.peer();
        if method == Method::Bye {
            d.state = DialogState::Terminating;
        }
        for (n, v) in extra {
            req.headers.push(n.clone(), v.clone());
        }
        if let Some(b) = body {
            set_body(&mut req, "application/sdp", b);
        }
        register_tx(&mut st, &req, dest);
        sh.send(&req.to_bytes(), dest);
        Ok(req)
    }

    async fn in_dialog(&mut self, id: &DialogId, method: Method) -> Result<Response> {
        let req = self.send_in_dialog(id, method.clone())?;
        let seq = req.cseq()?.seq;
        self.wait_final_from(&id.call_id, method, seq).await
    }

    /// REFER (RFC 3515) in dialog `id` to `refer_to` (a URI, or a name-addr with headers such
    /// as `Replaces`), waiting for the final response.
    pub async fn refer(&mut self, id: &DialogId, refer_to: &str) -> Result<Response> {
        let req = self.send_in_dialog_with(
            id,
            Method::Refer,
            &[
                (HeaderName::ReferTo, refer_to.to_string()),
                (HeaderName::ReferredBy, format!("<{}>", self.aor())),
            ],
        )?;
        let seq = req.cseq()?.seq;
        self.wait_final_from(&id.call_id, Method::Refer, seq).await
    }

    /// BYE and wait for its final response.
    pub async fn bye(&mut self, id: &DialogId) -> Result<Response> {
        self.in_dialog(id, Method::Bye).await
    }

    /// re-INVITE with a new SDP version and wait for the final response (a 2xx is ACKed).
    pub async fn reinvite(&mut self, id: &DialogId) -> Result<Response> {
        self.in_dialog(id, Method::Invite).await
    }

    /// Any other request in the dialog (INFO, OPTIONS, UPDATE, ...), waiting for its final
    /// response.
    pub async fn request_in_dialog(&mut self, id: &DialogId, method: Method) -> Result<Response> {
        self.in_dialog(id, method).await
    }

    /// ACK a 2xx by hand (with `Policy::auto_ack` off).
    pub fn ack(&self, resp: &Response) -> Result<()> {
        let sh = &self.shared;
        let mut st = sh.lock();
        let call_id = resp.call_id()?.to_string();
        let seq = resp.cseq()?.seq;
        let key = (call_id, seq, resp.to_tag().unwrap_or_default());
        let (ack, to, sent) = st.acks.get_mut(&key).context("no dialog for this 2xx")?;
        *sent = true;
        sh.send(ack, *to);
        Ok(())
    }
}
