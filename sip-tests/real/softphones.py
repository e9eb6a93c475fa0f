#!/usr/bin/env python3
"""Real soft-phones through an Understudy pair: hot takeover with bypass and relayed media.

baresip (Debian baresip-core, user alice) and PJSIP (PyPI pjsua2-python, user bob) register
at the main of a pair (main and stand-by on 127.0.0.1, dialog digest on the keep-alives),
one calls the other through the main, the main is killed with SIGKILL, and the stand-by must
re-bind the call from what the digest told it (offerless re-INVITE to the caller, the caller's
offer to the callee, the callee's answer in the ACK), from its own address. Then:

  * bypass media: RTP keeps flowing phone to phone in both directions (the PBX never sees it);
  * relay media: RTP reaches each phone from the main's relay before the crash and from the
    stand-by's relay (its own port range) after the re-bind, in both directions; the media gap
    at each phone is measured and must be at most 1.0 s; the stand-by's /calls and CDR count
    the relayed packets;
  * a hang-up on one phone ends the call on the other through the new active;
  * the stand-by's CDR has the call with recovered = 1 and end_reason = normal.

Scenarios (default: all four): caller x hang-up side, e.g. "baresip-calls:baresip-hangs-up".
Media modes (default: both): --media bypass|relay|both; each scenario runs once per mode.

Only the Python standard library and pjsua2 are used. Every process is started here and stopped
by its PID (also on failure). Traffic stays on 127.0.0.1.

    softphones.py --bin target/debug/understudy [--media both] [--scenario NAME]... [--keep]

The PJSIP phone is pjsua_agent.py (a subprocess controlled over loopback UDP); the shared
pieces (nodes, phones, sniffer, trace parsing) are in harness.py.
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

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    Baresip,
    Failure,
    Node,
    PjsuaPhone,
    Sniffer,
    on_signal,
    check_sdp_addresses,
    first_line,
    free_port,
    free_range,
    has_sdp,
    header,
    kill_all,
    log,
    pjsua_messages,
    sdp_note,
    sip_messages,
    stop,
    wait_for,
    write_wav,
)

SCENARIOS = {
    # name: (caller, hang-up side)
    "baresip-calls:baresip-hangs-up": ("baresip", "baresip"),
    "baresip-calls:pjsip-hangs-up": ("baresip", "pjsip"),
    "pjsip-calls:pjsip-hangs-up": ("pjsip", "pjsip"),
    "pjsip-calls:baresip-hangs-up": ("pjsip", "baresip"),
}

MEDIA_MODES = ("bypass", "relay")

# Relay mode: the longest time a phone may go without receiving RTP around the takeover
# (keep-alive 200 ms x 3 + 200 ms probe, then the re-bind exchange).
MAX_MEDIA_GAP_S = 1.0


# ------------------------------------------------------------------------------------------
# One scenario


class Scenario:
    def __init__(self, name, binary, root, register_baresip, sniff=True, settings=(),
                 media="bypass"):
        self.name = name
        self.media = media
        self.relay = media == "relay"
        self.caller, self.hanger = SCENARIOS[name]
        self.binary = binary
        self.dir = os.path.join(root, media, name.replace(":", "_"))
        os.makedirs(self.dir)
        self.register_baresip = register_baresip
        self.results = {}
        self.notes = []
        self.sniffer = None
        self.sniff = sniff
        self.settings = settings

    def run(self):
        try:
            self._run()
            return True
        finally:
            self._teardown()

    def _teardown(self):
        if self.sniffer:
            self.sniffer.stop()
        for p in (getattr(self, "bs", None), getattr(self, "pj", None)):
            if p is not None:
                p.quit()
        for n in (getattr(self, "main", None), getattr(self, "standby", None)):
            if n is not None and n.alive():
                stop(n.proc, signal.SIGKILL)

    def _run(self):
        R = self.results
        main_sip, standby_sip = free_port(), free_port()
        main_admin, standby_admin = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
        bs_rtp, pj_rtp = free_range(40), free_range(40)
        # Relay mode: distinct relay port ranges, so a packet's source port tells which node
        # relayed it.
        main_rtp, sb_rtp = (free_range(40), free_range(40)) if self.relay else (None, None)
        self.ranges = {"baresip": bs_rtp, "pjsua": pj_rtp, "main relay": main_rtp,
                       "stand-by relay": sb_rtp}
        wav = os.path.join(self.dir, "tone-8k.wav")
        write_wav(wav)

        self.bs = bs = Baresip(self.dir, main_sip, wav, bs_rtp, register=self.register_baresip)
        self.pj = pj = PjsuaPhone(self.dir, main_sip, pj_rtp)
        extra = {"settings": self.settings}
        if not self.register_baresip:
            # Work-around mode (see README): baresip is a static binding and an IP trunk, so
            # no digest challenge ever reaches it.
            extra = {
                "settings": self.settings,
                "users_extra": f'contact = "sip:alice@127.0.0.1:{bs.sip}"\n',
                "trunks": f'\n[[trunks]]\nname = "alice-phone"\naddress = "127.0.0.1:{bs.sip}"\n'
                          f"dialog_query = false\n",
            }
        self.main = main = Node(self.binary, self.dir, "main", "main", main_sip, main_admin,
                                standby_sip, extra, rtp_ports=main_rtp)
        self.standby = sb = Node(self.binary, self.dir, "standby", "standby", standby_sip,
                                 standby_admin, main_sip, extra, rtp_ports=sb_rtp)
        log(f"{self.name} [{self.media}]: main udp {main_sip} admin {main_admin}; stand-by udp "
            f"{standby_sip} admin {standby_admin}; baresip sip {bs.sip} rtp {bs_rtp}; pjsua sip "
            f"{pj.sip} rtp {pj_rtp}"
            + (f"; relay ports main {main_rtp}, stand-by {sb_rtp}" if self.relay else ""))

        try:
            if not self.sniff:
                raise PermissionError("disabled by --no-sniffer")
            self.sniffer = Sniffer(bs_rtp, pj_rtp)
            self.sniffer.start()
        except (PermissionError, OSError) as e:
            self.sniffer = None
            self.notes.append(f"no packet sniffer ({e}): RTP counted by the phones (pjsua stream "
                              f"stats, baresip RTCP reports)")

        # --- the pair
        main.start()
        wait_for("main active", lambda: main.status()["role"] == "active", 10)
        sb.start()

        def pair_up():
            s, m = sb.status(), main.status()
            return (s["role"] == "standby" and s["peer"]["state"] == "alive"
                    and m["peer"]["state"] == "alive")

        wait_for("stand-by up with the main alive", pair_up, 10)
        log("pair up: main active, stand-by standby, keep-alives both ways")

        # --- the phones
        pj.start()
        bs.start()

        def registered():
            st = pj.status()
            if st["reg_code"] and st["reg_code"] != 200 and st["reg_code"] // 100 != 1:
                raise Failure(f"pjsua REGISTER failed: {st['reg_code']} {st['reg_reason']}")
            if self.register_baresip:
                txt = bs.log_text()
                m = re.search(r"reg: (sip:alice\S*): (.*)", txt)
                if m and "200" not in m.group(2) and "OK" not in m.group(2):
                    raise Failure(f"baresip REGISTER failed: '{m.group(0).strip()}'")
            regs = main.registrations()
            return "alice" in regs and "bob" in regs and regs["alice"] and regs["bob"]

        try:
            wait_for("alice (baresip) and bob (pjsua) registered at the main", registered, 10, 0.1)
        except Failure as e:
            self._explain_register_failure(e)
            raise
        wait_for("stand-by learned the registrations (reg event)",
                 lambda: {"alice", "bob"} <= set(k for k, v in sb.registrations().items() if v), 5)
        log("phones registered at the main; stand-by knows both bindings")

        # --- the call
        t_dial = time.time()
        if self.caller == "baresip":
            r = bs.cmd("dial", f"sip:bob@127.0.0.1:{main_sip}")
            if not r.get("ok"):
                raise Failure(f"baresip dial failed: {r}")
        else:
            pj.cmd("dial", uri=f"sip:alice@127.0.0.1:{main_sip}")

        def up():
            c = pj.status()["call"]
            if c and c["state"] == "DISCONNECTED":
                raise Failure(f"pjsua call ended during setup: {c['last_status']} {c['reason']}")
            if bs.event("CALL_CLOSED", t_dial):
                raise Failure(f"baresip call closed during setup: {bs.event('CALL_CLOSED', t_dial)}")
            calls = main.calls()
            return (c and c["state"] == "CONFIRMED" and bs.event("CALL_ESTABLISHED", t_dial)
                    and len(calls) == 1 and calls[0]["state"] == "confirmed")

        wait_for("call confirmed on both phones and at the main", up, 10)
        R["setup_s"] = time.time() - t_dial
        call0 = main.calls()[0]
        log(f"call up in {R['setup_s']:.2f} s: token {call0['token']}, main /calls state confirmed")
        bad = check_sdp_addresses([bs.log_text(), pj.log_text()])
        if bad:
            raise Failure(f"SDP carried non-loopback addresses: {sorted(bad)}")
        if self.relay:
            self._check_relay_sdp(main, "main relay")
        wait_for("stand-by knows the call from the dialog digest",
                 lambda: sb.status()["digest"]["calls_known"] >= 1, 5)

        # --- RTP before the crash
        time.sleep(2.0)
        t_kill = time.time()
        before = self._rtp(t_kill - 1.5, t_kill)
        R["rtp_before"] = before
        log(f"RTP before the crash (last 1.5 s): {self._fmt_rtp(before)}")
        for key, v in before.items():
            if v is not None and v < 20:
                raise Failure(f"RTP not flowing before the crash: {key} = {v} packets in 1.5 s")
        if self.relay:
            self._check_relay_sources("before", t_kill - 1.5, t_kill, "main relay")
            m = (main.calls() or [{}])[0].get("media")
            R["main_media"] = m
            log(f"main /calls media before the crash: {m}")
            if not m or m["a_to_b_packets"] <= 0 or m["b_to_a_packets"] <= 0:
                raise Failure(f"the main's /calls shows no relayed packets in both directions: {m}")
        bs_rtcp_before = bs.rtcp_rx()

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
            f"after the kill (server: rebind_ms={report.get('rebind_ms')}, "
            f"via digest {report.get('recovered_via_digest')}, via query {report.get('recovered_via_query')})")
        calls = sb.calls()
        if len(calls) != 1 or calls[0]["state"] != "confirmed" or not calls[0].get("recovered"):
            raise Failure(f"stand-by /calls after the re-bind: {json.dumps(calls)}")
        sb_media_0 = calls[0].get("media") or {}

        # --- RTP after the re-bind
        t_rb = time.time()
        time.sleep(2.0)
        t_after = time.time()
        after = self._rtp(t_rb, t_after)
        sb_calls = sb.calls()
        R["rtp_after"] = after
        log(f"RTP after the re-bind (2 s): {self._fmt_rtp(after)}")
        pc = pj.status()["call"]
        if pc["state"] != "CONFIRMED":
            raise Failure(f"pjsua call not confirmed after the re-bind: {pc['state']} {pc['reason']}")
        if bs.event("CALL_CLOSED", t_dial):
            raise Failure(f"baresip call closed after the re-bind: {bs.event('CALL_CLOSED', t_dial)}")
        for key, v in after.items():
            if v is not None and v < 20:
                raise Failure(f"RTP not flowing after the re-bind: {key} = {v} packets in 2 s")
        if self.relay:
            self._check_relay_sources("after", t_rb, t_after, "stand-by relay")
            m0 = sb_media_0
            m1 = (sb_calls or [{}])[0].get("media")
            R["standby_media"] = {"at_rebind": m0, "2s_later": m1}
            log(f"stand-by /calls media: at the re-bind {self._fmt_media(m0)}; "
                f"2 s later {self._fmt_media(m1)}")
            if not m1 or any(m1[k] <= m0.get(k, 0) for k in ("a_to_b_packets", "b_to_a_packets")):
                raise Failure(f"the stand-by's /calls media counters are not rising in both "
                              f"directions: {m0} -> {m1}")
        self._check_rebind_exchange()
        if self.relay:
            self._check_relay_sdp(sb, "stand-by relay")
        R["rtp_gap"] = self._gaps(t_kill - 0.5, t_after)
        log("longest RTP gap from 0.5 s before the kill to the end of the check: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in R["rtp_gap"].items()))
        if self.relay:
            self._check_media_gap(t_kill, t_after)
        if self.sniffer is None:
            # Without a sniffer the pjsua -> baresip direction is seen only through baresip's
            # RTCP reports (every ~5 s): wait for one after the re-bind showing more packets.
            # Baseline: the last report before the crash, else the first one after the re-bind.
            base = bs_rtcp_before or wait_for("a baresip RTCP report after the re-bind",
                                              lambda: bs.rtcp_rx(after=t_rb), 12, 0.1)

            def bs_rx_rising():
                cur = bs.rtcp_rx(after=max(t_rb, base["t"] + 0.001))
                return cur if cur and cur["rx"] > base["rx"] else None

            cur = wait_for("baresip RTCP: packets received from pjsua rising after the re-bind",
                           bs_rx_rising, 12, 0.1)
            R["baresip_rtcp_rx"] = {"before": base["rx"], "after": cur["rx"]}
            log(f"baresip RTCP rx from pjsua: {base['rx']} -> {cur['rx']}")

        # --- hang up through the new active
        t_hang = time.time()
        if self.hanger == "baresip":
            r = bs.cmd("hangup")
            if not r.get("ok"):
                raise Failure(f"baresip hangup failed: {r}")
        else:
            pj.cmd("hangup")
        log(f"{self.hanger} hangs up")

        def other_side_ended():
            if self.hanger == "baresip":
                c = pj.status()["call"]
                return c and c["state"] == "DISCONNECTED"
            return bs.event("CALL_CLOSED", t_hang)

        try:
            wait_for("the other phone sees the call end", other_side_ended, 8, 0.05)
        finally:
            self._check_bye()
        R["hangup_s"] = time.time() - t_hang
        wait_for("stand-by /calls empty", lambda: sb.calls() == [], 5)
        bye_seen = [ln for ln in sb.log_text().splitlines() if "request in" in ln and "method=BYE" in ln]
        if not bye_seen:
            raise Failure("the stand-by's log shows no BYE received")
        log(f"call ended on both phones {R['hangup_s']:.3f} s after the hang-up; stand-by got: "
            f"{bye_seen[-1].split('understudy::server: ')[-1]}")

        # --- CDR on the stand-by (flushed on SIGTERM)
        rc = sb.terminate()
        R["standby_exit"] = rc
        db = os.path.join(sb.state_dir, "cdr.sqlite")
        if not os.path.exists(db):
            raise Failure(f"no CDR database at {db}")
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute(
            "SELECT call_id, caller, callee, end_reason, recovered, node, duration_ms FROM cdr"
        ).fetchall()
        media_rows = con.execute(
            "SELECT a_to_b_packets, a_to_b_lost, a_to_b_jitter_ms, b_to_a_packets, b_to_a_lost, "
            "b_to_a_jitter_ms FROM cdr"
        ).fetchall()
        con.close()
        R["cdr"] = rows
        R["cdr_media"] = media_rows
        log(f"stand-by CDR rows: {rows}; media (a->b packets, lost, jitter ms, b->a packets, "
            f"lost, jitter ms): {media_rows}")
        if len(rows) != 1 or rows[0][3] != "normal" or rows[0][4] != 1:
            raise Failure(f"stand-by CDR: expected one row with end_reason normal and recovered 1, got {rows}")
        if self.relay:
            self._check_cdr_media(media_rows[0], t_hang)

        bad = check_sdp_addresses([bs.log_text(), pj.log_text()])
        if bad:
            raise Failure(f"SDP carried non-loopback addresses: {sorted(bad)}")

    # --- helpers

    def _rtp(self, t0, t1):
        """Packets per direction in [t0, t1): from the sniffer and from pjsua's own counters.
        Bypass: phone to phone on the wire. Relay: what reaches each phone, from any source
        (the sources are checked by _check_relay_sources)."""
        out = {}
        bs, pj = self.ranges["baresip"], self.ranges["pjsua"]
        if self.sniffer and self.relay:
            out["to pjsua (wire)"] = self.sniffer.count(None, pj, t0, t1)
            out["to baresip (wire)"] = self.sniffer.count(None, bs, t0, t1)
        elif self.sniffer:
            out["baresip->pjsua (wire)"] = self.sniffer.count(bs, pj, t0, t1)
            out["pjsua->baresip (wire)"] = self.sniffer.count(pj, bs, t0, t1)
        c = self.pj.cmd("status", since=t0)["call"] or {}
        out["pjsua rx"] = self._pj_delta(c, "rx", t0, t1)
        out["pjsua tx"] = self._pj_delta(c, "tx", t0, t1)
        self.results["pjsua_restarts"] = c.get("restarts")
        self.results["pjsua_totals"] = {"rx": c.get("rx"), "tx": c.get("tx")}
        return out

    @staticmethod
    def _pj_delta(c, key, t0, t1):
        """Packets pjsua counted in [t0, t1), from its (time, cumulative count) samples."""
        def at(t):
            v = 0
            for ts, cum in c.get(key + "_hist", []):
                if ts < t:
                    v = cum
            return v

        return at(t1) - at(t0)

    def _gaps(self, t0, t1):
        gaps = {}
        bs, pj = self.ranges["baresip"], self.ranges["pjsua"]
        if self.sniffer and self.relay:
            gaps["to pjsua (wire)"] = self.sniffer.max_gap(None, pj, t0, t1)
            gaps["to baresip (wire)"] = self.sniffer.max_gap(None, bs, t0, t1)
        elif self.sniffer:
            gaps["baresip->pjsua (wire)"] = self.sniffer.max_gap(bs, pj, t0, t1)
            gaps["pjsua->baresip (wire)"] = self.sniffer.max_gap(pj, bs, t0, t1)
        c = self.pj.cmd("status", since=t0)["call"] or {}
        for key in ("rx", "tx"):
            ts = [t for t, _ in c.get(key + "_hist", []) if t0 <= t < t1]
            pts = [t0] + ts + [t1]
            gaps[f"pjsua {key}"] = max(b - a for a, b in zip(pts, pts[1:]))
        return gaps

    # --- relay mode

    def _label(self, port):
        """Whose port: baresip, pjsua, main relay, stand-by relay, or other."""
        for name, r in self.ranges.items():
            if r and r[0] <= port <= r[1]:
                return name
        return "other"

    def _check_relay_sources(self, when, t0, t1, relay):
        """Relay mode, in [t0, t1): every RTP packet that reaches a phone comes from `relay`
        (the main's or the stand-by's port range), at least 20 per phone, and each phone sends
        at least 20 to `relay`. Also pjsua's own idea of where its RTP comes from."""
        R = self.results
        seen = {}
        if self.sniffer:
            for phone in ("pjsua", "baresip"):
                rx = self.sniffer.select(None, self.ranges[phone], t0, t1)
                tx = self.sniffer.select(self.ranges[phone], None, t0, t1)
                by_src, by_dst = {}, {}
                for _, src, _ in rx:
                    k = f"{src[0]}:{src[1]} ({self._label(src[1])})"
                    by_src[k] = by_src.get(k, 0) + 1
                for _, _, dst in tx:
                    k = f"{dst[0]}:{dst[1]} ({self._label(dst[1])})"
                    by_dst[k] = by_dst.get(k, 0) + 1
                seen[f"to {phone} from"] = by_src
                seen[f"{phone} sent to"] = by_dst
                wrong = {k: v for k, v in by_src.items() if not k.endswith(f"({relay})")}
                if wrong:
                    raise Failure(f"RTP {when} the takeover: packets reached {phone} from other "
                                  f"sources than the {relay} {self.ranges[relay]}: {by_src}")
                n = sum(by_src.values())
                if n < 20:
                    raise Failure(f"RTP {when} the takeover: only {n} packets reached {phone} "
                                  f"from the {relay} in {t1 - t0:.1f} s: {by_src}")
                n = sum(v for k, v in by_dst.items() if k.endswith(f"({relay})"))
                if n < 20:
                    raise Failure(f"RTP {when} the takeover: {phone} sent only {n} packets to "
                                  f"the {relay} in {t1 - t0:.1f} s: {by_dst}")
        # pjsua's stream: the source of the RTP it receives (srcRtpName), last change before t1
        c = self.pj.cmd("status")["call"] or {}
        srcs = [a for t, a in c.get("rtp_sources", []) if t < t1]
        cur = srcs[-1] if srcs else ""
        port = int(cur.rsplit(":", 1)[1]) if ":" in cur else 0
        seen["pjsua stream source"] = f"{cur} ({self._label(port)})"
        R[f"rtp_sources_{when}"] = seen
        log(f"RTP sources {when} the takeover: "
            + "; ".join(f"{k} {v}" for k, v in seen.items()))
        if self._label(port) != relay:
            raise Failure(f"RTP {when} the takeover: pjsua's stream receives from {cur!r}, not "
                          f"from the {relay} {self.ranges[relay]}")

    def _check_relay_sdp(self, node, relay):
        """Relay mode: every SDP a phone got from `node` names 127.0.0.1 and a port in the
        node's relay range, and the two phones got different ports (one pair per leg)."""
        port = node.sip
        got = {
            "baresip": [b for src, _, b in sip_messages(self.bs.log_text(), port, -1)
                        if src.endswith(f":{port}") and has_sdp(b)],
            "pjsua": [b for d, b in pjsua_messages(self.pj.log_text(), port)
                      if d == "RX" and has_sdp(b)],
        }
        ports = {}
        for phone, bodies in got.items():
            if not bodies:
                raise Failure(f"relay SDP: {phone} got no SDP from the {node.name}")
            for b in bodies:
                c = re.search(r"^c=IN IP4 (\S+)", b, re.M)
                m = re.search(r"^m=audio (\d+)", b, re.M)
                addr = f"{c.group(1) if c else '?'}:{m.group(1) if m else '?'}"
                if (not c or c.group(1) != "127.0.0.1" or not m
                        or self._label(int(m.group(1))) != relay):
                    raise Failure(f"relay SDP: {first_line(b)} from the {node.name} to {phone} "
                                  f"has media at {addr}, not in the {relay} "
                                  f"{self.ranges[relay]}")
                ports.setdefault(phone, set()).add(int(m.group(1)))
        if ports["baresip"] & ports["pjsua"]:
            raise Failure(f"relay SDP: both phones got the same relay port from the "
                          f"{node.name}: {ports}")
        self.results.setdefault("relay_sdp", {})[node.name] = {k: sorted(v) for k, v in ports.items()}
        log(f"SDP from the {node.name}: relay ports " + ", ".join(
            f"{k} {sorted(v)}" for k, v in ports.items()))

    def _check_media_gap(self, t_kill, t_end):
        """Relay mode: the longest time each phone went without RTP around the takeover, and
        its parts (the last packet from the main's relay, the first from the stand-by's)."""
        R = self.results
        main_r, sb_r = self.ranges["main relay"], self.ranges["stand-by relay"]
        t0 = t_kill - 0.5
        gaps = {}
        if self.sniffer:
            for phone, other in (("pjsua", "baresip"), ("baresip", "pjsua")):
                rng = self.ranges[phone]
                last_main = [p[0] for p in self.sniffer.select(main_r, rng, t0, t_end)]
                first_sb = [p[0] for p in self.sniffer.select(sb_r, rng, t0, t_end)]
                gaps[f"{other}->{phone}"] = {
                    "gap_s": self.sniffer.max_gap(None, rng, t0, t_end),
                    "last_from_main_s": (max(last_main) - t_kill) if last_main else None,
                    "first_from_standby_s": (min(first_sb) - t_kill) if first_sb else None,
                    "how": f"wire, at {phone}",
                }
        else:
            gaps["baresip->pjsua"] = {"gap_s": R["rtp_gap"]["pjsua rx"], "how": "pjsua rx stats"}
            self.notes.append("no sniffer: the media gap is measured at pjsua only (its rx "
                              "counter); the pjsua->baresip direction is checked by RTCP")
        R["media_gap"] = gaps

        def ms(v):
            return "?" if v is None else f"{v * 1000:+.0f} ms"

        for k, g in gaps.items():
            extra = ""
            if "last_from_main_s" in g:
                extra = (f" (last packet from the main's relay at {ms(g['last_from_main_s'])}, "
                         f"first from the stand-by's at {ms(g['first_from_standby_s'])}, "
                         f"from the kill)")
            log(f"MEDIA GAP {k}: {g['gap_s'] * 1000:.0f} ms{extra} "
                f"[{g['how']}; limit {MAX_MEDIA_GAP_S * 1000:.0f} ms]")
        bad = {k: round(g["gap_s"], 3) for k, g in gaps.items() if g["gap_s"] > MAX_MEDIA_GAP_S}
        if bad:
            raise Failure(f"media gap over {MAX_MEDIA_GAP_S:.1f} s at the takeover: {bad} "
                          f"(detection {R['detection_s']:.3f} s, re-bind {R['rebind_s']:.3f} s "
                          f"after the kill)")

    def _check_cdr_media(self, row, t_hang):
        """Relay mode: the stand-by's CDR counts relayed packets in both directions; compared
        with what the phones sent to the stand-by's relay (on the wire)."""
        a_to_b, b_to_a = row[0], row[3]
        if not a_to_b or not b_to_a or a_to_b <= 0 or b_to_a <= 0:
            raise Failure(f"stand-by CDR media counters: a_to_b_packets = {a_to_b}, "
                          f"b_to_a_packets = {b_to_a}; both must be > 0")
        if self.sniffer:
            sb_r = self.ranges["stand-by relay"]
            caller, callee = ((self.ranges["baresip"], self.ranges["pjsua"])
                              if self.caller == "baresip"
                              else (self.ranges["pjsua"], self.ranges["baresip"]))
            wire = {}
            for key, rng, cdr in (("a->b", caller, a_to_b), ("b->a", callee, b_to_a)):
                by_hang = self.sniffer.count(rng, sb_r, 0, t_hang)
                total = self.sniffer.count(rng, sb_r, 0, time.time())
                wire[key] = {"cdr": cdr, "wire_until_hangup": by_hang, "wire_total": total}
                if not by_hang <= cdr <= total:
                    self.notes.append(f"CDR {key} packets {cdr} outside what the phone sent to "
                                      f"the stand-by's relay: {by_hang} until the hang-up, "
                                      f"{total} in all")
            self.results["cdr_vs_wire"] = wire
            log(f"stand-by CDR media vs packets sent to its relay: {wire}")

    @staticmethod
    def _fmt_media(m):
        if not m:
            return "none"
        return f"a->b {m.get('a_to_b_packets')} b->a {m.get('b_to_a_packets')}"

    @staticmethod
    def _fmt_rtp(d):
        return ", ".join(f"{k} {v}" for k, v in d.items())

    def _explain_register_failure(self, e):
        txt = self.bs.log_text()
        m = re.search(r"SIP/2.0 401.*?\n\n", txt, re.S)
        if m:
            ch = [ln for ln in m.group(0).splitlines() if ln.startswith("WWW-Authenticate")]
            self.notes.append("401 challenge the main sent to baresip:\n      " + "\n      ".join(ch))
        m = re.search(r"reg: sip:alice\S*: (.*)", txt)
        if m:
            self.notes.append(f"baresip says: {m.group(0).strip()}")
            if "Function not implemented" in m.group(0) and "SHA-256" in txt:
                self.notes.append(
                    "libre 1.1 (Debian's baresip 1.0) fails the whole 401 with ENOSYS when any "
                    "WWW-Authenticate has an algorithm other than MD5, even if an MD5 challenge "
                    "is also there: the server must be able to send MD5 only (or the test can "
                    "run with --baresip-auth static to exercise the rest)")

    def _check_rebind_exchange(self):
        """What the stand-by sent each phone and what the phone answered: the caller gets an
        offerless re-INVITE, offers in its 200 and gets the answer in the ACK; the callee gets
        the caller's offer and answers in its 200; both from the stand-by, with its Contact."""
        sb_port = self.standby.sip
        bs_msgs = [("in" if src.endswith(f":{sb_port}") else "out", body)
                   for src, _, body in sip_messages(self.bs.log_text(), sb_port, -1)]
        pj_msgs = [("in" if d == "RX" else "out", body)
                   for d, body in pjsua_messages(self.pj.log_text(), sb_port)]
        R = self.results
        R["baresip_exchange"] = [f"{d:3} {first_line(b)} [{sdp_note(b)}]" for d, b in bs_msgs]
        R["pjsua_exchange"] = [f"{d:3} {first_line(b)} [{sdp_note(b)}]" for d, b in pj_msgs]
        log("baresip <-> stand-by: " + "; ".join(R["baresip_exchange"][:4]))
        log("pjsua   <-> stand-by: " + "; ".join(R["pjsua_exchange"][:4]))
        caller, callee = (bs_msgs, pj_msgs) if self.caller == "baresip" else (pj_msgs, bs_msgs)
        names = ("baresip", "pjsua") if self.caller == "baresip" else ("pjsua", "baresip")
        expect = {
            "caller": [("in", "INVITE ", False), ("out", "SIP/2.0 200", True), ("in", "ACK ", True)],
            "callee": [("in", "INVITE ", True), ("out", "SIP/2.0 200", True), ("in", "ACK ", None)],
        }
        for role, msgs, name in (("caller", caller, names[0]), ("callee", callee, names[1])):
            for direction, start, with_sdp in expect[role]:
                def wanted(d, b):
                    if d != direction or not first_line(b).startswith(start):
                        return False
                    # a response: the one to the re-INVITE
                    return not start.startswith("SIP/") or (header(b, "CSeq") or "").endswith("INVITE")

                m = next((b for d, b in msgs if wanted(d, b)), None)
                if m is None:
                    raise Failure(f"re-bind: {name} ({role}) has no {start.strip()} "
                                  f"{'from' if direction == 'in' else 'to'} the stand-by")
                if with_sdp is not None and has_sdp(m) != with_sdp:
                    raise Failure(f"re-bind: {name} ({role}): {first_line(m)} "
                                  f"{'has no' if with_sdp else 'has an'} SDP body")
                if start == "INVITE ":
                    contact = header(m, "Contact") or ""
                    if f"127.0.0.1:{sb_port}" not in contact:
                        raise Failure(f"re-bind: {name}'s re-INVITE has Contact {contact!r}, "
                                      f"not the stand-by's address")

    def _check_bye(self):
        """Where did the hanging-up phone send its BYE?"""
        main_port, sb_port = self.main.sip, self.standby.sip
        if self.hanger == "baresip":
            msgs = sip_messages(self.bs.log_text(), main_port, sb_port)
            dests = [d for s, d, b in msgs
                     if s.endswith(f":{self.bs.sip}") and first_line(b).startswith("BYE ")]
        else:
            dests = [f"127.0.0.1:{m.group(1)}" for m in re.finditer(
                r"TX \d+ bytes Request msg BYE/cseq=\d+ [^\n]*? to UDP 127\.0\.0\.1:(\d+):",
                self.pj.log_text())]
        names = {f"127.0.0.1:{main_port}": "the dead main", f"127.0.0.1:{sb_port}": "the stand-by"}
        self.results["bye_sent_to"] = [f"{d} ({names.get(d, '?')})" for d in dests]
        for d in dests:
            if d.endswith(f":{main_port}"):
                self.notes.append(f"{self.hanger} sent its BYE to the dead main ({d})")


# ------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("UNDERSTUDY_BIN", "target/debug/understudy"))
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="run only these (repeatable); default: all four")
    ap.add_argument("--media", choices=["both", *MEDIA_MODES],
                    default=os.environ.get("REAL_MEDIA", "both"),
                    help="media mode of the pair: bypass (RTP phone to phone), relay (RTP "
                         "through the active node's relay, [media] mode = \"relay\" with a "
                         "distinct rtp_ports range per node), or both (default: every scenario "
                         "in bypass mode, then in relay mode)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory on success")
    ap.add_argument("--baresip-auth", choices=["register", "static"],
                    default=os.environ.get("BARESIP_AUTH", "register"),
                    help="register: baresip REGISTERs with digest (the acceptance criterion); "
                         "static: work-around for servers that baresip cannot authenticate "
                         "with (static binding + IP trunk for baresip's address)")
    ap.add_argument("--no-sniffer", action="store_true",
                    help="do not count RTP on the wire (AF_PACKET on lo), even when permitted")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="add a key to both node configs, e.g. --set 'registrar.x=\"y\"' (TOML value)")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    if not os.access(binary, os.X_OK):
        print(f"FAIL: understudy binary not found or not executable: {binary}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(kill_all)
    root = tempfile.mkdtemp(prefix="understudy-real-")
    log(f"work directory {root}; understudy {binary}")
    names = a.scenario or list(SCENARIOS)
    modes = MEDIA_MODES if a.media == "both" else (a.media,)
    runs = [(mode, name) for mode in modes for name in names]
    outcome = []
    for mode, name in runs:
        label = f"{mode} {name}"
        if outcome and "REGISTER failed" in (outcome[-1][2] or ""):
            log(f"=== {label}: not run (the REGISTER failure above would repeat)")
            outcome.append((label, False, "not run: " + outcome[-1][2].removeprefix("not run: "),
                            None))
            continue
        sc = Scenario(name, binary, root, a.baresip_auth == "register", sniff=not a.no_sniffer,
                      settings=a.set, media=mode)
        log(f"=== {label}")
        try:
            sc.run()
            outcome.append((label, True, None, sc))
        except Failure as e:
            log(f"FAIL: {e}")
            outcome.append((label, False, str(e), sc))
        except Exception as e:  # noqa: BLE001 - reported as a failure of this scenario
            traceback.print_exc()
            outcome.append((label, False, f"{type(e).__name__}: {e}", sc))
        except (SystemExit, KeyboardInterrupt) as e:
            outcome.append((label, False, f"interrupted ({e})", sc))
            break
    kill_all()

    print("\n======================== summary ========================")
    ok_all = True
    for name, ok, err, sc in outcome:
        ok_all &= ok
        R = sc.results if sc else {}
        print(f"{'PASS' if ok else 'FAIL'}  {name}  (baresip auth: {a.baresip_auth})")
        if err:
            print(f"      reason: {err}")
        for k in ("setup_s", "detection_s", "rebind_s", "hangup_s"):
            if k in R:
                print(f"      {k:12} {R[k] * 1000:8.0f} ms")
        if "takeover" in R:
            t = R["takeover"]
            print(f"      takeover    recovered={t.get('recovered')} via_digest={t.get('recovered_via_digest')} "
                  f"via_query={t.get('recovered_via_query')} rebind_ms={t.get('rebind_ms')} "
                  f"not_notifiers={t.get('not_notifiers')}")
        for k in ("rtp_before", "rtp_after"):
            if k in R:
                print(f"      {k:12} {Scenario._fmt_rtp(R[k])}")
        if "rtp_gap" in R:
            print("      rtp_gap      " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in R["rtp_gap"].items()))
        if "media_gap" in R:
            for k, g in R["media_gap"].items():
                parts = ""
                if g.get("last_from_main_s") is not None and g.get("first_from_standby_s") is not None:
                    parts = (f" (last from main relay {g['last_from_main_s'] * 1000:+.0f} ms, "
                             f"first from stand-by relay {g['first_from_standby_s'] * 1000:+.0f} ms "
                             f"after the kill)")
                print(f"      media_gap    {k} {g['gap_s'] * 1000:.0f} ms{parts} "
                      f"[{g['how']}, limit {MAX_MEDIA_GAP_S * 1000:.0f} ms]")
        for when in ("before", "after"):
            for k, v in (R.get(f"rtp_sources_{when}") or {}).items():
                print(f"      src {when:6}   {k}: {v}")
        if "main_media" in R:
            print(f"      main /calls media before the kill: {Scenario._fmt_media(R['main_media'])}")
        if "standby_media" in R:
            m = R["standby_media"]
            print(f"      stand-by /calls media: at the re-bind {Scenario._fmt_media(m['at_rebind'])}, "
                  f"2 s later {Scenario._fmt_media(m['2s_later'])}")
        for k in ("relay_sdp", "baresip_rtcp_rx", "pjsua_totals",
                  "pjsua_restarts", "bye_sent_to", "cdr", "cdr_media", "cdr_vs_wire"):
            if k in R:
                print(f"      {k:12} {R[k]}")
        if not ok:
            for k in ("baresip_exchange", "pjsua_exchange"):
                if R.get(k):
                    print(f"      {k}:")
                    for line in R[k]:
                        print(f"        {line}")
        for n in sc.notes if sc else []:
            print(f"      note: {n}")
        if not ok and sc:
            print(f"      logs: {sc.dir}")
    print("=========================================================")
    print("RESULT:", "PASS" if ok_all else "FAIL")
    if ok_all and not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"work directory kept: {root}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
