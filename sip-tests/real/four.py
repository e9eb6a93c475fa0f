#!/usr/bin/env python3
"""Four real soft-phones through an Understudy pair: linphone and Twinkle, each against another
client (baresip, PJSIP, or each other), with hold/resume and a kill -9 of the main.

Per scenario, on a fresh pair (main and stand-by on 127.0.0.1, hot mode, dialog digest):
  1. both phones register with digest at the main; the stand-by learns both bindings;
  2. the caller dials the callee through the main; the call is confirmed on both phones, in the
     main's GET /calls, and known to the stand-by (/status digest.calls_known);
  3. the holder (linphone or twinkle) puts the call on hold (re-INVITE a=sendonly/inactive,
     200) and resumes it (a=sendrecv, 200); RTP must flow both ways after the resume;
  4. kill -9 of the main; the stand-by becomes active and re-binds the call (RFC 3725
     re-INVITEs, takeover.recovered = 1); each phone got a re-INVITE from the stand-by with its
     Contact and answered 200; RTP flows both ways after the re-bind;
  5. (probe) the holder sends a blind transfer (REFER) to an unknown user into the call; what
     the new active answered is reported (405 while the PBX does not accept REFER; with REFER
     support a 202 and a failed transfer); the call must survive it;
  6. the holder hangs up; the other phone sees the end; the stand-by's /calls is empty;
  7. SIGTERM of the stand-by; its CDR has one row, recovered = 1, end_reason = normal.

Media is bypass (RTP phone to phone), counted on the wire with harness.Sniffer (AF_PACKET on
lo, needs CAP_NET_RAW). Exit 0 only if every scenario passed.

    four.py --bin target/release/understudy [--scenario NAME]... [--keep] [--no-transfer-probe]
            [--attended]

--attended adds two probes without a takeover: the transferor (linphone or twinkle) calls bob
(pjsua) and carol (the other new client), then transfers the first call to the second (REFER
with Replaces); the probe passes when that REFER is sent and answered (today: 405).

Drivers: phones_more.py (linphone-daemon, twinkle-console, and the harness's baresip and pjsua
agent behind the same face). Standard library only.
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    Failure,
    Node,
    Sniffer,
    check_sdp_addresses,
    first_line,
    free_port,
    free_range,
    has_sdp,
    header,
    kill_all,
    log,
    on_signal,
    sdp_note,
    stop,
    wait_for,
    write_wav,
)
from phones_more import PHONES, Unsupported  # noqa: E402

# name: (caller, caller's user, callee, callee's user, holder)
# baresip is always alice and the pjsua agent always bob (harness); the new phones take the
# other user. The holder (the new client) also sends the transfer probe and hangs up.
SCENARIOS = {
    "linphone-calls-baresip": ("linphone", "bob", "baresip", "alice", "linphone"),
    "pjsua-calls-linphone": ("pjsua", "bob", "linphone", "alice", "linphone"),
    "twinkle-calls-pjsua": ("twinkle", "alice", "pjsua", "bob", "twinkle"),
    "baresip-calls-twinkle": ("baresip", "alice", "twinkle", "bob", "twinkle"),
    "linphone-calls-twinkle": ("linphone", "alice", "twinkle", "bob", "linphone"),
    "twinkle-calls-linphone": ("twinkle", "alice", "linphone", "bob", "twinkle"),
}

MIN_RTP = 20  # packets per direction in each window (50 pps -> 75 in 1.5 s)


def direction_attr(msg):
    m = re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", msg, re.M)
    if m:
        return m.group(1)
    c = re.search(r"^c=IN IP4 0\.0\.0\.0", msg, re.M)
    return "inactive (c=0.0.0.0)" if c else "sendrecv (none)"


class Scenario:
    def __init__(self, name, binary, root, transfer_probe=True, settings=()):
        self.name = name
        self.caller_kind, self.caller_user, self.callee_kind, self.callee_user, self.holder_kind = \
            SCENARIOS[name]
        self.binary = binary
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.transfer_probe = transfer_probe
        self.settings = settings
        self.results = {}
        self.notes = []
        self.sniffer = None
        self.phones = []

    def run(self):
        try:
            self._run()
            return True
        finally:
            self._teardown()

    def _teardown(self):
        if self.sniffer:
            self.sniffer.stop()
        for p in self.phones:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001
                self.notes.append(f"stopping {p.name}: {e}")
        for n in (getattr(self, "main", None), getattr(self, "standby", None)):
            if n is not None and n.alive():
                stop(n.proc, signal.SIGKILL)

    # --- helpers

    def _rtp(self, t0, t1):
        a, b = self.caller, self.callee
        return {f"{a.name}->{b.name}": self.sniffer.count(a.rtp_range, b.rtp_range, t0, t1),
                f"{b.name}->{a.name}": self.sniffer.count(b.rtp_range, a.rtp_range, t0, t1)}

    def _require_rtp(self, what, t0, t1, minimum=MIN_RTP):
        r = self._rtp(t0, t1)
        self.results[f"rtp_{what}"] = r
        log(f"RTP {what} ({t1 - t0:.1f} s): " + ", ".join(f"{k} {v}" for k, v in r.items()))
        low = {k: v for k, v in r.items() if v < minimum}
        if low:
            extra = ""
            if "linphone" in (self.caller.name, self.callee.name):
                lp = self.caller if self.caller.name == "linphone" else self.callee
                extra = (f" (linphone call states {[(round(t - self.t_dial, 2), s) for t, s, _ in lp.events]}, "
                         f"player starts {[(round(t - self.t_dial, 2), c, s) for t, c, s in lp.player_starts]})")
            raise Failure(f"RTP not flowing {what}: {low} packets in {t1 - t0:.1f} s (want >= "
                          f"{minimum}){extra}")
        return r

    def _both_up(self, since):
        for p in (self.caller, self.callee):
            if p.ended(since):
                raise Failure(f"{p.name} reports the call ended: {p.call_state()}")
        return self.caller.established(since) and self.callee.established(since)

    def _msgs(self, phone, peer_port, since_index=0):
        return [(d, b) for d, peer, b in phone.trace()[since_index:] if peer.endswith(f":{peer_port}")]

    @staticmethod
    def _final(msgs, method, direction="out"):
        """Requests `method` sent (direction) in msgs and their final answers: the last
        request that got a final answer other than 401/407 (a challenged request is re-sent
        with credentials), as (request, answer); None while there is none."""
        got = None
        for d, b in msgs:
            if d != direction or not first_line(b).startswith(method + " "):
                continue
            cseq = header(b, "CSeq")
            resp = [r for dd, r in msgs if dd != direction and first_line(r).startswith("SIP/2.0 ")
                    and header(r, "CSeq") == cseq and not first_line(r).startswith("SIP/2.0 1")]
            if resp and not re.match(r"SIP/2\.0 40[17]", first_line(resp[0])):
                got = (b, resp[0])
        return got

    def _wait_reinvite(self, phone, peer_port, since_index, what, timeout=5):
        """The phone's own re-INVITE to `peer_port` after trace index `since_index`, and its
        final answer (after any 401/407). Returns (invite, 200)."""
        def done():
            got = self._final(self._msgs(phone, peer_port, since_index), "INVITE")
            if got and not first_line(got[1]).startswith("SIP/2.0 200"):
                raise Failure(f"{what}: {phone.name}'s re-INVITE got {first_line(got[1])}")
            return got

        return wait_for(f"{what}: {phone.name} re-INVITE and 200", done, timeout, 0.05)

    # --- the scenario

    def _run(self):
        R = self.results
        main_sip, standby_sip = free_port(), free_port()
        main_admin, standby_admin = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
        wav = os.path.join(self.dir, "tone-8k.wav")
        write_wav(wav)
        self.caller = PHONES[self.caller_kind](self.dir, main_sip, wav, free_range(40), self.caller_user)
        self.callee = PHONES[self.callee_kind](self.dir, main_sip, wav, free_range(40), self.callee_user)
        self.phones = [self.caller, self.callee]
        self.holder = self.caller if self.caller.name == self.holder_kind else self.callee
        self.other = self.callee if self.holder is self.caller else self.caller
        extra = {"settings": self.settings}
        self.main = main = Node(self.binary, self.dir, "main", "main", main_sip, main_admin,
                                standby_sip, extra)
        self.standby = sb = Node(self.binary, self.dir, "standby", "standby", standby_sip,
                                 standby_admin, main_sip, extra)
        log(f"{self.name}: main udp {main_sip} admin {main_admin}; stand-by udp {standby_sip} "
            f"admin {standby_admin}; {self.caller.name} ({self.caller.user}) sip {self.caller.sip} "
            f"rtp {self.caller.rtp_range}; {self.callee.name} ({self.callee.user}) sip "
            f"{self.callee.sip} rtp {self.callee.rtp_range}")
        self.sniffer = Sniffer(self.caller.rtp_range, self.callee.rtp_range)
        self.sniffer.start()

        # --- the pair
        main.start()
        wait_for("main active", lambda: main.status()["role"] == "active", 10)
        sb.start()

        def pair_up():
            s, m = sb.status(), main.status()
            return (s["role"] == "standby" and s["peer"]["state"] == "alive"
                    and m["peer"]["state"] == "alive")

        wait_for("stand-by up with the main alive", pair_up, 10)
        log("pair up: main active, stand-by standby")

        # --- the phones
        for p in self.phones:
            p.start()
        users = {self.caller.user, self.callee.user}

        def registered():
            regs = main.registrations()
            return all(regs.get(u) for u in users)

        try:
            wait_for(f"{self.caller.name} and {self.callee.name} registered at the main",
                     registered, 10, 0.1)
        except Failure as e:
            for p in self.phones:
                rs = [first_line(b) for d, _, b in p.trace() if "REGISTER" in (header(b, "CSeq") or "")]
                self.notes.append(f"{p.name} REGISTER exchange: {rs}")
            raise e
        wait_for("stand-by learned the registrations",
                 lambda: users <= set(k for k, v in sb.registrations().items() if v), 5)
        R["register"] = {p.name: [first_line(b) for d, _, b in p.trace()
                                  if "REGISTER" in (header(b, "CSeq") or "")] for p in self.phones}
        log("registered with digest: " + "; ".join(f"{k}: {' / '.join(v[:4])}"
                                                    for k, v in R["register"].items()))

        # --- the call
        self.t_dial = t_dial = time.time()
        self.caller.dial(f"sip:{self.callee.user}@127.0.0.1:{main_sip}")

        def up():
            if not self._both_up(t_dial):
                return False
            calls = main.calls()
            return len(calls) == 1 and calls[0]["state"] == "confirmed"

        wait_for("call confirmed on both phones and at the main", up, 10, 0.05)
        R["setup_s"] = time.time() - t_dial
        log(f"call up in {R['setup_s']:.2f} s: main /calls {main.calls()[0]['state']}")
        wait_for("stand-by knows the call from the dialog digest",
                 lambda: sb.status()["digest"]["calls_known"] >= 1, 5)
        time.sleep(1.5)
        t = time.time()
        self._require_rtp("after setup", t - 1.0, t)

        # --- hold and resume by the holder (through the main)
        idx = len(self.holder.trace())
        t_hold = time.time()
        self.holder.hold()
        inv, ok = self._reinvite_direction("hold", idx, main_sip, ("sendonly", "inactive"))
        time.sleep(1.0)
        t = time.time()
        R["rtp_on_hold"] = self._rtp(t - 0.8, t)
        log(f"on hold: RTP in the last 0.8 s {R['rtp_on_hold']} (informational)")
        calls = main.calls()
        if len(calls) != 1 or calls[0]["state"] != "confirmed":
            raise Failure(f"main /calls while on hold: {json.dumps(calls)}")
        if self.holder.ended(t_hold) or self.other.ended(t_hold):
            raise Failure("the call ended on hold")
        idx = len(self.holder.trace())
        self.holder.resume()
        self._reinvite_direction("resume", idx, main_sip, ("sendrecv", "sendrecv (none)"))
        time.sleep(1.5)
        t = time.time()
        self._require_rtp("after the resume", t - 1.0, t)
        digest_before = sb.status()["digest"]
        R["digest_before_kill"] = digest_before

        # --- crash the main
        main.kill9()
        t_kill = time.time()
        log("main killed with SIGKILL")
        wait_for("stand-by active", lambda: sb.status()["role"] == "active", 10, 0.01)
        R["detection_s"] = time.time() - t_kill

        def recovered():
            to = sb.status().get("takeover") or {}
            if to.get("failed") or to.get("ended"):
                raise Failure(f"takeover report: {json.dumps(to)}")
            return to if to.get("recovered", 0) >= 1 else None

        report = wait_for("takeover.recovered = 1 on the stand-by", recovered, 10, 0.01)
        R["rebind_s"] = time.time() - t_kill
        R["takeover"] = report
        log(f"stand-by active after {R['detection_s']:.3f} s; call re-bound {R['rebind_s']:.3f} s "
            f"after the kill (rebind_ms={report.get('rebind_ms')})")
        calls = sb.calls()
        if len(calls) != 1 or calls[0]["state"] != "confirmed" or not calls[0].get("recovered"):
            raise Failure(f"stand-by /calls after the re-bind: {json.dumps(calls)}")
        self._check_rebind_exchange()
        t_rb = time.time()
        time.sleep(2.0)
        if self.caller.ended(t_dial) or self.callee.ended(t_dial):
            raise Failure(f"a phone ended the call after the re-bind: {self.caller.name} "
                          f"{self.caller.call_state()}, {self.callee.name} {self.callee.call_state()}")
        self._require_rtp("after the re-bind", t_rb + 0.5, time.time())
        R["rtp_gap"] = {k: round(self.sniffer.max_gap(a.rtp_range, b.rtp_range, t_kill - 0.5, time.time()), 3)
                        for k, a, b in ((f"{self.caller.name}->{self.callee.name}", self.caller, self.callee),
                                        (f"{self.callee.name}->{self.caller.name}", self.callee, self.caller))}
        log(f"longest RTP gap from 0.5 s before the kill: {R['rtp_gap']}")

        # --- blind transfer probe (REFER) at the new active
        if self.transfer_probe:
            self._transfer_probe(standby_sip, t_dial)

        # --- hang up through the new active
        t_hang = time.time()
        self.holder.hangup()
        log(f"{self.holder.name} hangs up")
        try:
            wait_for(f"{self.other.name} sees the call end", lambda: self.other.ended(t_hang), 8, 0.05)
        finally:
            self._check_bye()
        R["hangup_s"] = time.time() - t_hang
        wait_for("stand-by /calls empty", lambda: sb.calls() == [], 5)
        bye_seen = [ln for ln in sb.log_text().splitlines() if "request in" in ln and "method=BYE" in ln]
        if not bye_seen:
            raise Failure("the stand-by's log shows no BYE received")
        log(f"call ended {R['hangup_s']:.3f} s after the hang-up")

        # --- CDR on the stand-by (flushed on SIGTERM)
        R["standby_exit"] = sb.terminate()
        db = os.path.join(sb.state_dir, "cdr.sqlite")
        if not os.path.exists(db):
            raise Failure(f"no CDR database at {db}")
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute("SELECT call_id, caller, callee, end_reason, recovered, node, duration_ms "
                           "FROM cdr").fetchall()
        con.close()
        R["cdr"] = rows
        log(f"stand-by CDR rows: {rows}")
        if len(rows) != 1 or rows[0][3] != "normal" or rows[0][4] != 1:
            raise Failure(f"stand-by CDR: expected one row with end_reason normal and recovered 1, "
                          f"got {rows}")
        bad = check_sdp_addresses([p.log_text() for p in self.phones])
        if bad:
            raise Failure(f"SDP carried non-loopback addresses: {sorted(bad)}")

    def _reinvite_direction(self, what, idx, main_sip, wanted):
        inv, ok = self._wait_reinvite(self.holder, main_sip, idx, what)
        d_off, d_ans = direction_attr(inv), direction_attr(ok)
        self.results[what] = f"{self.holder.name} re-INVITE [{d_off}] -> {first_line(ok)} [{d_ans}]"
        log(f"{what}: {self.results[what]}")
        if d_off not in wanted:
            raise Failure(f"{what}: {self.holder.name}'s re-INVITE offers {d_off}, want one of {wanted}")
        return inv, ok

    def _check_rebind_exchange(self):
        """Each phone gets a re-INVITE from the stand-by (its Contact) and answers 200; the
        caller's has no SDP (it offers in the 200, gets the answer in the ACK), the callee's
        carries the caller's offer."""
        sb_port = self.standby.sip
        for role, phone, with_sdp in (("caller", self.caller, False), ("callee", self.callee, True)):
            def got(phone=phone):
                msgs = self._msgs(phone, sb_port)
                inv = next((b for d, b in msgs if d == "in" and first_line(b).startswith("INVITE ")), None)
                ok = next((b for d, b in msgs if d == "out" and first_line(b).startswith("SIP/2.0 ")
                           and (header(b, "CSeq") or "").endswith("INVITE")
                           and not first_line(b).startswith("SIP/2.0 1")), None)
                return (inv, ok, msgs) if inv and ok else None

            inv, ok, msgs = wait_for(f"re-bind: {phone.name} ({role}) re-INVITE from the stand-by "
                                     f"and its answer", got, 5, 0.05)
            self.results[f"rebind_{phone.name}"] = [f"{d:3} {first_line(b)} [{sdp_note(b)}]"
                                                    for d, b in msgs[:4]]
            log(f"{phone.name} <-> stand-by: " + "; ".join(self.results[f"rebind_{phone.name}"]))
            if not first_line(ok).startswith("SIP/2.0 200"):
                raise Failure(f"re-bind: {phone.name} answered the stand-by's re-INVITE with "
                              f"{first_line(ok)}")
            if has_sdp(inv) != with_sdp:
                raise Failure(f"re-bind: {phone.name} ({role}): the re-INVITE "
                              f"{'has no' if with_sdp else 'has an'} SDP body")
            if not has_sdp(ok):
                raise Failure(f"re-bind: {phone.name} ({role}): its 200 has no SDP")
            contact = header(inv, "Contact") or header(inv, "m") or ""
            if f"127.0.0.1:{sb_port}" not in contact:
                raise Failure(f"re-bind: {phone.name}'s re-INVITE has Contact {contact!r}, not the "
                              f"stand-by's address")

    def _transfer_probe(self, standby_sip, t_dial):
        # A user the PBX does not know: today the REFER gets 405; once the PBX accepts REFER
        # it answers 202 and the transfer fails (404 to the target), which keeps the call.
        target = f"sip:nobody@127.0.0.1:{standby_sip}"
        idx = len(self.holder.trace())
        t = time.time()
        try:
            self.holder.transfer(target)
        except Unsupported as e:
            self.results["transfer_probe"] = f"unsupported: {e}"
            return

        def refer():
            return self._final([(d, b) for d, _, b in self.holder.trace()[idx:]], "REFER")

        req, resp = wait_for(f"{self.holder.name} sends a REFER and gets a final answer", refer, 5, 0.05)
        dest = [peer for d, peer, b in self.holder.trace()[idx:] if d == "out"
                and first_line(b).startswith("REFER ")][0]
        self.results["transfer_probe"] = (f"{self.holder.name}: {first_line(req)} (Refer-To: "
                                          f"{header(req, 'Refer-To') or header(req, 'r')}) to {dest} -> "
                                          f"{first_line(resp)}")
        log(f"transfer probe: {self.results['transfer_probe']}")
        time.sleep(0.5)
        calls = self.standby.calls()
        if self.holder.ended(t) or self.other.ended(t) or len(calls) != 1:
            raise Failure(f"the call did not survive the refused REFER: {self.holder.name} "
                          f"{self.holder.call_state()}, {self.other.name} {self.other.call_state()}, "
                          f"stand-by /calls {json.dumps(calls)}")

    def _check_bye(self):
        main_port, sb_port = self.main.sip, self.standby.sip
        dests = [peer for d, peer, b in self.holder.trace() if d == "out" and first_line(b).startswith("BYE ")]
        names = {f"127.0.0.1:{main_port}": "the dead main", f"127.0.0.1:{sb_port}": "the stand-by"}
        self.results["bye_sent_to"] = [f"{d} ({names.get(d, '?')})" for d in dests]
        for d in dests:
            if d.endswith(f":{main_port}"):
                self.notes.append(f"{self.holder.name} sent its BYE to the dead main ({d})")


# Attended transfer probes (no takeover): the transferor (alice) calls bob (the pjsua agent),
# then carol (the other new client), then transfers the first call to the second with a REFER
# carrying Replaces. The PBX refuses REFER today; the probe checks what the client sends.
ATTENDED = {
    "attended-linphone": ("linphone", "twinkle"),
    "attended-twinkle": ("twinkle", "linphone"),
}


class AttendedProbe(Scenario):
    def __init__(self, name, binary, root, settings=()):  # noqa: D107 - no Scenario.__init__
        self.name = name
        self.transferor_kind, self.carol_kind = ATTENDED[name]
        self.binary = binary
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.settings = settings
        self.results = {}
        self.notes = []
        self.sniffer = None
        self.phones = []

    def _run(self):
        R = self.results
        main_sip, standby_sip = free_port(), free_port()
        main_admin, standby_admin = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
        wav = os.path.join(self.dir, "tone-8k.wav")
        write_wav(wav)
        x = PHONES[self.transferor_kind](self.dir, main_sip, wav, free_range(40), "alice")
        bob = PHONES["pjsua"](self.dir, main_sip, wav, free_range(40), "bob")
        carol = PHONES[self.carol_kind](self.dir, main_sip, wav, free_range(40), "carol")
        self.phones = [x, bob, carol]
        extra = {"settings": self.settings,
                 "trunks": '\n[[users]]\nname = "carol"\npassword = "carol-secret"\n'}
        self.main = main = Node(self.binary, self.dir, "main", "main", main_sip, main_admin,
                                standby_sip, extra)
        self.standby = sb = Node(self.binary, self.dir, "standby", "standby", standby_sip,
                                 standby_admin, main_sip, extra)
        main.start()
        wait_for("main active", lambda: main.status()["role"] == "active", 10)
        sb.start()
        wait_for("stand-by up", lambda: sb.status()["role"] == "standby", 10)
        for p in self.phones:
            p.start()
        wait_for("alice, bob and carol registered at the main",
                 lambda: all(main.registrations().get(u) for u in ("alice", "bob", "carol")), 10, 0.1)
        t = time.time()
        x.dial(f"sip:bob@127.0.0.1:{main_sip}")
        wait_for(f"{x.name} -> bob (pjsua) confirmed",
                 lambda: x.established(t) and bob.established(t), 10, 0.05)
        t = time.time()
        if x.name == "linphone":
            first = x.call_id
            x.dial(f"sip:carol@127.0.0.1:{main_sip}")  # linphone pauses the first call itself
            second = x.call_id
            wait_for(f"linphone -> carol ({carol.name}) confirmed",
                     lambda: x.calls.get(second) == "StreamsRunning" and carol.established(t), 10, 0.05)
            idx = len(x.trace())
            x.transfer_attended(second, call=first)
            R["command"] = f"call-transfer {first} {second}"
        else:
            # twinkle: 'transfer -c <uri>' holds line 1 and calls on line 2 (consultation)
            x.transfer_attended(f"sip:carol@127.0.0.1:{main_sip}")
            wait_for(f"twinkle line 2 -> carol ({carol.name}) confirmed",
                     lambda: x._said(r"Line 2: far end answered call", t) and carol.established(t),
                     10, 0.05)
            idx = len(x.trace())
            x.transfer_attended(None, consult_done=True)
            R["command"] = f"transfer -c sip:carol@127.0.0.1:{main_sip}; then transfer -c"

        def refer():
            return self._final([(d, b) for d, _, b in x.trace()[idx:]], "REFER")

        def refer_or_fallback():
            got = refer()
            if got is None and x.name == "twinkle" and "Remote end does not support 'replaces'" in x.log_text():
                raise Failure(
                    "twinkle sent no REFER: it does REFER with Replaces only when the consultation "
                    "call's far end advertised 'replaces' (Supported/Require), and the PBX's 200 "
                    "has no 'Supported: replaces'; its log says \"Remote end does not support "
                    "'replaces'. Transfer with consultation.\" and the fallback (hang up the "
                    "consultation call, blind REFER) sent nothing")
            return got

        req, resp = wait_for(f"{x.name} sends a REFER with Replaces and gets a final answer",
                             refer_or_fallback, 5, 0.05)
        refer_to = header(req, "Refer-To") or header(req, "r") or ""
        R["refer"] = f"{first_line(req)} Refer-To: {refer_to} -> {first_line(resp)}"
        log(f"attended transfer probe ({R['command']}): {R['refer']}")
        if "replaces" not in refer_to.lower():
            raise Failure(f"{x.name}'s REFER has no Replaces in Refer-To: {refer_to!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("UNDERSTUDY_BIN", "target/debug/understudy"))
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS) + sorted(ATTENDED),
                    help="run only these (repeatable); default: all")
    ap.add_argument("--keep", action="store_true", help="keep the work directory on success")
    ap.add_argument("--attended", action="store_true",
                    help="also run the attended-transfer probes (" + ", ".join(ATTENDED) + ")")
    ap.add_argument("--no-transfer-probe", action="store_true",
                    help="do not send the blind-transfer REFER after the re-bind")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="add a key to both node configs (TOML value)")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    if not os.access(binary, os.X_OK):
        print(f"FAIL: understudy binary not found or not executable: {binary}", file=sys.stderr)
        return 2
    missing = [b for b in ("linphone-daemon", "twinkle-console", "baresip") if not shutil.which(b)]
    if missing:
        print(f"FAIL: missing clients {missing} (run-four.sh installs them)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(kill_all)
    root = tempfile.mkdtemp(prefix="understudy-four-")
    log(f"work directory {root}; understudy {binary}")
    outcome = []
    t_start = time.time()
    for name in a.scenario or list(SCENARIOS) + (list(ATTENDED) if a.attended else []):
        if name in ATTENDED:
            sc = AttendedProbe(name, binary, root, settings=a.set)
        else:
            sc = Scenario(name, binary, root, transfer_probe=not a.no_transfer_probe, settings=a.set)
        log(f"=== {name}")
        t0 = time.time()
        try:
            sc.run()
            outcome.append((name, True, None, sc, time.time() - t0))
        except Failure as e:
            log(f"FAIL: {e}")
            outcome.append((name, False, str(e), sc, time.time() - t0))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            outcome.append((name, False, f"{type(e).__name__}: {e}", sc, time.time() - t0))
        except (SystemExit, KeyboardInterrupt) as e:
            outcome.append((name, False, f"interrupted ({e})", sc, time.time() - t0))
            break
    kill_all()

    print("\n======================== summary ========================")
    ok_all = True
    for name, ok, err, sc, dur in outcome:
        ok_all &= ok
        R = sc.results
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({dur:.1f} s)")
        if err:
            print(f"      reason: {err}")
        for k in ("setup_s", "detection_s", "rebind_s", "hangup_s"):
            if k in R:
                print(f"      {k:12} {R[k] * 1000:8.0f} ms")
        for k in ("register", "hold", "resume", "rtp_on_hold", "rtp_after setup",
                  "rtp_after the resume", "rtp_after the re-bind", "rtp_gap", "takeover",
                  "transfer_probe", "bye_sent_to", "cdr", "command", "refer"):
            if k in R:
                print(f"      {k:12} {R[k]}")
        for k in sorted(R):
            if k.startswith("rebind_") and k != "rebind_s":
                print(f"      {k:12} {R[k]}")
        for n in sc.notes:
            print(f"      note: {n}")
        if not ok:
            print(f"      logs: {sc.dir}")
    print("=========================================================")
    print(f"RESULT: {'PASS' if ok_all else 'FAIL'} ({time.time() - t_start:.0f} s)")
    if ok_all and not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"work directory kept: {root}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
