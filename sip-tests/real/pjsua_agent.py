#!/usr/bin/env python3
"""The PJSIP phone of the real soft-phone tests (pjsua2 from the PyPI wheel pjsua2-python).

Registers at the given registrar, answers every call with 200, connects the call's audio to the
null sound device (a call not connected to it sends no RTP), counts RTP from the stream
statistics, and takes commands as JSON over a loopback UDP socket: status, dial, hangup, quit.
Started by harness.PjsuaPhone; all addresses are 127.0.0.1.

Commands for the transfer scenarios of four.py (each acts on the newest call, or on the call
with index `call` in the agent's list; none changes what the commands above do or report):
  calls                      every call: index, state, Call-ID, remote URI, times, rx/tx
  hold / resume              Call.setHold() / Call.reinvite() with PJSUA_CALL_UNHOLD
  xfer {uri}                 blind transfer: Call.xfer() (REFER, Refer-To: uri)
  xfer_replaces {other}      attended transfer: Call.xferReplaces(calls[other]) (REFER with
                             Replaces naming the other call's dialog)
  dial_replaces {uri, replaces}  a new call whose INVITE carries `Replaces: <replaces>`
                             (RFC 3891; CallOpParam.txOption.headers)
"""

import argparse
import ctypes
import json
import os
import socket
import sys
import time


def pjsua_agent(argv):
    """The PJSIP phone: registers, auto-answers, sends and receives RTP through the null sound
    device, and reports its state over a loopback UDP control socket."""
    ap = argparse.ArgumentParser(prog="pjsua_agent.py")
    ap.add_argument("--sip-port", type=int, required=True)
    ap.add_argument("--ctl-port", type=int, required=True)
    ap.add_argument("--registrar", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--rtp-port", type=int, required=True)
    ap.add_argument("--rtp-range", type=int, required=True)
    ap.add_argument("--log", required=True)
    # Behind NAT (the NAT test bed): the phone's own (private) address, a second registrar
    # (the stand-by: the phone registers at both nodes), PJSIP's NAT defaults (Contact and Via
    # rewritten to what the registrar saw), and control over a Unix socket (the driver is in
    # another network namespace).
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--registrar2")
    ap.add_argument("--nat-defaults", action="store_true")
    # The public address learned from the registrar in the SDP (bypass media across NATs).
    ap.add_argument("--sdp-nat-rewrite", action="store_true")
    ap.add_argument("--ctl-unix")
    # SDES-keyed SRTP only (RTP/SAVP with a=crypto; a plain RTP offer or answer is refused).
    ap.add_argument("--srtp", action="store_true")
    # SIP over TLS: a TLS transport on this port; servers' certificates checked against --ca.
    # Give the registrars as "host:port;transport=tls".
    ap.add_argument("--tls-port", type=int)
    ap.add_argument("--ca")
    a = ap.parse_args(argv)

    import pjsua2 as pj

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.userAgent = "understudy-real-test pjsua2"
    cfg.logConfig.level = 5
    cfg.logConfig.consoleLevel = 1
    cfg.logConfig.filename = a.log
    cfg.medConfig.noVad = True  # the null capture device is silence: send it anyway
    cfg.medConfig.ecTailLen = 0
    ep.libInit(cfg)
    tc = pj.TransportConfig()
    tc.port = a.sip_port
    tc.boundAddress = a.bind
    tc.publicAddress = a.bind
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
    if a.tls_port:
        tt = pj.TransportConfig()
        tt.port = a.tls_port
        tt.boundAddress = a.bind
        tt.publicAddress = a.bind
        if a.ca:
            tt.tlsConfig.CaListFile = a.ca
            tt.tlsConfig.verifyServer = True
        ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tt)
    ep.libStart()
    adm = ep.audDevManager()
    adm.setNullDev()
    for codec in ep.codecEnum2():  # G.711 only, like the baresip side
        if not codec.codecId.startswith(("PCMU/", "PCMA/")):
            ep.codecSetPriority(codec.codecId, 0)

    st = {"reg_code": 0, "reg_reason": "", "call": None, "ended": [], "log": []}

    def note(text):
        st["log"].append([time.time(), text])
        del st["log"][:-200]

    class Call(pj.Call):
        def __init__(self, acc, call_id=pj.PJSUA_INVALID_ID):
            super().__init__(acc, call_id)
            self.rec = {
                "state": "NULL", "state_code": 0, "last_status": 0, "remote_contact": "",
                "rx": 0, "tx": 0, "rx_raw": 0, "tx_raw": 0, "restarts": 0, "media_updates": 0,
                "rtp_local": "", "rtp_remote": "", "confirmed_at": None, "ended_at": None,
                "reason": "", "rx_hist": [], "tx_hist": [],
                # [time, address] each time the source of the received RTP changes
                "rtp_sources": [],
            }

        def onCallState(self, prm):
            ci = self.getInfo()
            r = self.rec
            r["state"], r["state_code"] = ci.stateText, ci.state
            r["last_status"], r["reason"] = ci.lastStatusCode, ci.lastReason
            r["remote_contact"] = ci.remoteContact
            note(f"call state {ci.stateText} {ci.lastStatusCode} {ci.lastReason}")
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and r["confirmed_at"] is None:
                r["confirmed_at"] = time.time()
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                r["ended_at"] = time.time()

        def onCallTsxState(self, prm):
            try:
                self.rec["remote_contact"] = self.getInfo().remoteContact
            except pj.Error:
                pass

        def onCallMediaState(self, prm):
            ci = self.getInfo()
            self.rec["media_updates"] += 1
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    am = self.getAudioMedia(mi.index)
                    # A call not connected to the (null) sound device sends no RTP.
                    adm.getCaptureDevMedia().startTransmit(am)
                    am.startTransmit(adm.getPlaybackDevMedia())
                    note(f"media active (update {self.rec['media_updates']})")

        def sample(self, now):
            r = self.rec
            if r["ended_at"] is not None:
                return
            try:
                ss = self.getStreamStat(0)
                rx, tx = ss.rtcp.rxStat.pkt, ss.rtcp.txStat.pkt
                ti = self.getMedTransportInfo(0)
                r["rtp_local"], r["rtp_remote"] = ti.localRtpName, ti.srcRtpName
            except pj.Error:
                return
            src = r["rtp_sources"]
            if r["rtp_remote"] and (not src or src[-1][1] != r["rtp_remote"]):
                src.append([round(now, 4), r["rtp_remote"]])
                del src[:-100]
            for key, cur in (("rx", rx), ("tx", tx)):
                prev = r[key + "_raw"]
                delta = cur - prev if cur >= prev else cur  # the stream was re-created
                if cur < prev:
                    r["restarts"] += 1
                    note(f"{key} counter restarted ({prev} -> {cur}): stream re-created")
                r[key + "_raw"] = cur
                if delta > 0:
                    r[key] += delta
                    h = r[key + "_hist"]
                    h.append([round(now, 4), r[key]])
                    del h[:-6000]

    class Acc(pj.Account):
        def onRegState(self, prm):
            st["reg_code"], st["reg_reason"] = prm.code, prm.reason
            note(f"registration {prm.code} {prm.reason}")

        def onIncomingCall(self, prm):
            c = Call(self, prm.callId)
            calls.append(c)
            note("incoming call: answering 200")
            op = pj.CallOpParam()
            op.statusCode = 200
            c.answer(op)

    calls = []

    def account(registrar):
        ac = pj.AccountConfig()
        ac.idUri = f"sip:{a.user}@{registrar}"
        ac.regConfig.registrarUri = f"sip:{registrar}"
        ac.regConfig.timeoutSec = 600
        ac.regConfig.retryIntervalSec = 0
        ac.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", a.user, 0, a.password))
        if not a.nat_defaults:
            ac.natConfig.sipOutboundUse = 0
            ac.natConfig.contactRewriteUse = 0
            ac.natConfig.viaRewriteUse = 0
            ac.natConfig.sdpNatRewriteUse = 0
        if a.sdp_nat_rewrite:
            ac.natConfig.sdpNatRewriteUse = 1
        ac.natConfig.iceEnabled = False
        if a.srtp:
            ac.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_MANDATORY
            ac.mediaConfig.srtpSecureSignaling = 0  # SRTP over plain UDP signalling
        ac.mediaConfig.transportConfig.boundAddress = a.bind
        if not a.sdp_nat_rewrite:
            ac.mediaConfig.transportConfig.publicAddress = a.bind
        ac.mediaConfig.transportConfig.port = a.rtp_port
        ac.mediaConfig.transportConfig.portRange = a.rtp_range
        acc = Acc()
        acc.create(ac)
        return acc

    acc = account(a.registrar)
    accounts = [acc] + ([account(a.registrar2)] if a.registrar2 else [])

    if a.ctl_unix:
        if os.path.exists(a.ctl_unix):
            os.unlink(a.ctl_unix)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ctl.bind(a.ctl_unix)
    else:
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ctl.bind(("127.0.0.1", a.ctl_port))
    ctl.setblocking(False)

    def current():
        return calls[-1] if calls else None

    def report(since):
        c = current()
        rec = None
        if c is not None:
            rec = {k: v for k, v in c.rec.items() if not k.endswith("_hist")}
            for key in ("rx", "tx"):
                h = c.rec[key + "_hist"]
                i = len(h)
                while i > 0 and h[i - 1][0] >= since:
                    i -= 1
                # the last sample before `since` is the baseline
                rec[key + "_hist"] = h[max(i - 1, 0):]
        regs = []
        for x in accounts:
            try:
                i = x.getInfo()
                regs.append({"uri": i.uri, "code": i.regStatus, "active": i.regIsActive})
            except pj.Error:
                regs.append(None)
        return {"reg_code": st["reg_code"], "reg_reason": st["reg_reason"], "call": rec,
                "registrations": regs,
                "log": st["log"][-40:], "now": time.time()}

    # pjsua writes its log file through stdio without flushing: flush all C streams often, so
    # the driver reads every SIP message as soon as it is sent or received.
    libc = ctypes.CDLL(None)
    running = True
    last_sample = last_flush = 0.0
    while running:
        ep.libHandleEvents(5)
        now = time.time()
        if now - last_flush >= 0.02:
            last_flush = now
            libc.fflush(None)
        if now - last_sample >= 0.01:
            last_sample = now
            for c in calls[-1:]:
                c.sample(now)
        while True:
            try:
                data, peer = ctl.recvfrom(65536)
            except BlockingIOError:
                break
            req = json.loads(data.decode())
            rep = {"id": req.get("id")}
            try:
                cmd = req["cmd"]
                if cmd == "status":
                    rep.update(report(req.get("since", now - 5)))
                elif cmd == "dial":
                    c = Call(acc)
                    calls.append(c)
                    prm = pj.CallOpParam(True)
                    c.makeCall(req["uri"], prm)
                    note(f"dialling {req['uri']}")
                elif cmd == "hangup":
                    c = current()
                    if c is None:
                        raise RuntimeError("no call")
                    note("hanging up")
                    c.hangup(pj.CallOpParam(True))
                elif cmd == "calls":
                    rep["calls"] = []
                    for i, c in enumerate(calls):
                        item = {"index": i, "state": c.rec["state"], "confirmed_at": c.rec["confirmed_at"],
                                "ended_at": c.rec["ended_at"], "rx": c.rec["rx"], "tx": c.rec["tx"],
                                "last_status": c.rec["last_status"]}
                        try:
                            ci = c.getInfo()
                            item.update(call_id=ci.callIdString, remote_uri=ci.remoteUri,
                                        local_uri=ci.localUri)
                        except pj.Error:
                            pass
                        rep["calls"].append(item)
                elif cmd in ("hold", "resume", "xfer", "xfer_replaces"):
                    c = calls[req["call"]] if "call" in req else current()
                    if c is None:
                        raise RuntimeError("no call")
                    prm = pj.CallOpParam(True)
                    if cmd == "hold":
                        note("holding")
                        c.setHold(prm)
                    elif cmd == "resume":
                        note("resuming")
                        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
                        c.reinvite(prm)
                    elif cmd == "xfer":
                        note(f"blind transfer to {req['uri']}")
                        c.xfer(req["uri"], prm)
                    else:
                        note(f"attended transfer to call {req['other']}")
                        c.xferReplaces(calls[req["other"]], prm)
                elif cmd == "dial_replaces":
                    c = Call(acc)
                    calls.append(c)
                    prm = pj.CallOpParam(True)
                    h = pj.SipHeader()
                    h.hName = "Replaces"
                    h.hValue = req["replaces"]
                    prm.txOption.headers.append(h)
                    c.makeCall(req["uri"], prm)
                    note(f"dialling {req['uri']} with Replaces: {req['replaces']}")
                elif cmd == "quit":
                    running = False
                else:
                    raise RuntimeError(f"unknown command {cmd}")
            except pj.Error as e:
                rep["error"] = f"pjsua2: {e.info()}"
            except Exception as e:  # noqa: BLE001 - reported to the driver
                rep["error"] = f"{type(e).__name__}: {e}"
            libc.fflush(None)
            ctl.sendto(json.dumps(rep).encode(), peer)
    try:
        ep.hangupAllCalls()
        for _ in range(20):
            ep.libHandleEvents(10)
    finally:
        # Skip the un-REGISTER wait: the registrar may be the dead main.
        libc.fflush(None)
        os._exit(0)


if __name__ == "__main__":
    pjsua_agent(sys.argv[1:])
