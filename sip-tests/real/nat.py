#!/usr/bin/env python3
"""Two real PJSIP phones behind two NATs keep their call across a kill -9 of the main.

The NAT test bed (sip-tests/nat/natbed.sh): the main and the stand-by in their site
namespaces, alice behind home router 1 and bob behind home router 2 (nftables masquerading
with a random public port per flow, replies only). Each phone is pjsua2 at its defaults for
NAT (Contact and Via rewritten to what the registrar saw) with one account per node, so it
registers at both. alice calls bob through the main; the main is killed; the stand-by must
re-bind the call over the flows the phones opened to it (the takeover report says
nat_own_flow = 2), both phones must see the stand-by as their new remote target, and
alice's hang-up must end the call at the stand-by with one CDR (recovered, normal). Run once
with bypass media (signalling), once with the media relay (RTP both ways before the kill
and after the re-bind), and once more through the relay with both phones insisting on SDES
SRTP (RTP/SAVP, a=crypto): the relay forwards packets it cannot read, the phones count only
packets that decrypt, before the kill and after the re-bind.

    sip-tests/real/nat.py --bin ./target/release/understudy      (as root)
"""

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BED_SCRIPT = os.path.join(HERE, "..", "nat", "natbed.sh")
BED = "natreal"
TOKEN = "natreal-admin-token"
MAIN, STANDBY = "192.0.2.2", "198.51.100.2"
PHONES = {"alice": ("p1", "192.0.2.130"), "bob": ("p2", "192.0.2.134")}


class Failure(Exception):
    pass


def log(msg):
    print(f"[nat {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what, fn, timeout, interval=0.05):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise Failure(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def config(name, home, me, peer, state, media):
    return f"""[node]
name = "{name}"
home_role = "{home}"
sip_udp = "{me}:5060"
domain = "pbx.local"

[admin]
listen = "{me}:8080"
token = "{TOKEN}"

[state]
dir = "{state}"

[cdr]
path = "{state}/cdr.sqlite"

[pair]
peer = "{peer}:5060"
secret = "nat-real-pair-secret"
keepalive_ms = 200
missed_keepalives = 3
probe_timeout_ms = 200
mode = "hot"
dialog_digest = true

[media]
mode = "{media}"
rtp_ports = "20000-20999"

[[users]]
name = "alice"
password = "alice-secret"

[[users]]
name = "bob"
password = "bob-secret"
"""


def http_json(addr, path):
    req = urllib.request.Request(f"http://{addr}:8080{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=1.0) as r:
        return json.loads(r.read().decode())


class Agent:
    def __init__(self, work, user, sdp_nat_rewrite, srtp=False):
        self.user = user
        self.ns, self.ip = PHONES[user]
        self.ctl = os.path.join(work, f"{user}.ctl")
        self.me = os.path.join(work, f"{user}.drv")
        self.log = os.path.join(work, f"{user}-pjsua.log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.me)
        self.seq = 0
        out = open(os.path.join(work, f"{user}-agent.out"), "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{BED}-{self.ns}", sys.executable,
             os.path.join(HERE, "pjsua_agent.py"), "--bind", self.ip, "--sip-port", "5060",
             "--ctl-port", "0", "--ctl-unix", self.ctl, "--registrar", f"{MAIN}:5060",
             "--registrar2", f"{STANDBY}:5060", "--nat-defaults", "--user", user,
             "--password", f"{user}-secret", "--rtp-port", "40000", "--rtp-range", "100",
             "--log", self.log] + (["--sdp-nat-rewrite"] if sdp_nat_rewrite else [])
            + (["--srtp"] if srtp else []),
            stdout=out, stderr=subprocess.STDOUT)

    def cmd(self, command, timeout=2.0, **kw):
        self.seq += 1
        self.sock.sendto(json.dumps(dict(kw, cmd=command, id=self.seq)).encode(), self.ctl)
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sock.settimeout(max(deadline - time.time(), 0.01))
            try:
                rep = json.loads(self.sock.recv(65536).decode())
            except socket.timeout:
                break
            if rep.get("id") == self.seq:
                if rep.get("error"):
                    raise Failure(f"{self.user}: {command}: {rep['error']}")
                return rep
        raise Failure(f"{self.user}: no answer to {command}")

    def call(self):
        return self.cmd("status").get("call") or {}

    def stop(self):
        try:
            self.cmd("quit", timeout=1)
            self.proc.wait(timeout=3)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def own_and_learned(standby, aor):
    regs = http_json(standby, "/registrations")["registrations"]
    contacts = [c for r in regs if r["aor"] == aor for c in r["contacts"]]
    return ({c["source"] for c in contacts if c["own_flow"]},
            {c["source"] for c in contacts if not c["own_flow"]})


def rx(agent):
    return agent.call().get("rx", 0)


def savp_offers(agent):
    """How many SDP bodies in the phone's log (its own and those it received) are SDES-keyed
    SRTP: an audio line with the RTP/SAVP profile and a crypto attribute."""
    text = open(agent.log, errors="replace").read()
    return sum(1 for body in text.split("v=0")[1:]
               if "RTP/SAVP" in body.split("\n\n")[0] and "a=crypto:" in body)


def inner(binary, media, srtp=False):
    """One run; `media` is the nodes' media mode. Bypass: RTP goes phone to phone through both
    routers (port-keeping NATs, public addresses in the SDP) and must go on across the
    re-bind. Relay: RTP through the main's relay before the kill and the stand-by's after the
    re-bind, both ways (the relay latches to where each phone's packets come from). `srtp`:
    both phones insist on SDES SRTP (the relay forwards the packets it cannot read; the
    phones count only packets that decrypt)."""
    log(f"media {media}{' with SRTP' if srtp else ''}")
    work = tempfile.mkdtemp(prefix=f"understudy-nat-real-{media}-")
    procs, agents = {}, []
    try:
        for name, home, me, peer in (("main", "main", MAIN, STANDBY),
                                     ("standby", "standby", STANDBY, MAIN)):
            state = os.path.join(work, name)
            os.makedirs(state)
            cfg = os.path.join(work, f"{name}.toml")
            with open(cfg, "w") as f:
                f.write(config(f"{name}-1", home, me, peer, state, media))
            ns = f"{BED}-{'main' if name == 'main' else 'sb'}"
            procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", ns, binary, "run", "--config", cfg],
                stdout=open(os.path.join(work, f"{name}.log"), "w"), stderr=subprocess.STDOUT)
        wait_for("the pair", lambda: http_json(MAIN, "/status")["role"] == "active"
                 and http_json(STANDBY, "/status")["peer"]["state"] == "alive", 15)
        # Bypass: the phones put the public address their registrar saw in their SDP and
        # their routers keep ports, so RTP can go phone to phone once both have sent.
        bypass = media == "bypass"
        alice, bob = Agent(work, "alice", bypass, srtp), Agent(work, "bob", bypass, srtp)
        agents += [alice, bob]
        for a in agents:
            wait_for(f"{a.user} registered at both nodes", lambda a=a: all(
                r and r["code"] == 200 for r in a.cmd("status", timeout=0.5)["registrations"])
                and len(a.cmd("status", timeout=0.5)["registrations"]) == 2, 20, 0.2)
            wait_for(f"the stand-by knowing both of {a.user}'s flows",
                     lambda a=a: all(own_and_learned(STANDBY, a.user)), 10, 0.1)
            own, learned = own_and_learned(STANDBY, a.user)
            log(f"{a.user} at the stand-by: own flow {own}, the main's {learned}")
        alice.cmd("dial", uri=f"sip:bob@{MAIN}:5060")
        wait_for("the call confirmed on both phones", lambda: alice.call().get("state_code") == 5
                 and bob.call().get("state_code") == 5, 10)
        wait_for("the stand-by knowing the call",
                 lambda: http_json(STANDBY, "/status")["digest"]["calls_known"] >= 1, 5)
        if True:
            base = (rx(alice), rx(bob))
            wait_for(f"RTP both ways before the kill ({media})",
                     lambda: rx(alice) > base[0] + 50 and rx(bob) > base[1] + 50, 10)
        log("call up through the main; kill -9 of the main")
        procs["main"].kill()
        procs["main"].wait()
        t0 = time.time()
        st = wait_for("the takeover done", lambda: (lambda s: s if s["role"] == "active"
                      and s.get("takeover") and not s["takeover"]["in_progress"] else None)(
                          http_json(STANDBY, "/status")), 20)
        rep = st["takeover"]
        log(f"takeover report {time.time() - t0:.2f} s after the kill: {json.dumps(rep)}")
        if rep["recovered"] != 1 or rep["nat_own_flow"] != 2 or rep["nat_no_flow"] != 0:
            raise Failure(f"takeover report: {rep}")
        for a in agents:
            wait_for(f"{a.user} re-bound to the stand-by",
                     lambda a=a: STANDBY in a.call().get("remote_contact", ""), 10)
        if True:
            base = (rx(alice), rx(bob))
            wait_for(f"RTP both ways after the re-bind ({media})",
                     lambda: rx(alice) > base[0] + 50 and rx(bob) > base[1] + 50, 10)
            log(f"RTP after the re-bind: alice {rx(alice) - base[0]}, bob {rx(bob) - base[1]} "
                "packets received")
        if srtp:
            # The initial offer/answer and the re-bind's each went both ways as SRTP.
            n = {a.user: savp_offers(a) for a in agents}
            log(f"SDES-SRTP SDP bodies in the phones' logs: {n}")
            if min(n.values()) < 4:
                raise Failure(f"SRTP SDP bodies seen by the phones: {n}, want >= 4 each")
        log("both phones re-bound to the stand-by; alice hangs up")
        alice.cmd("hangup")
        wait_for("the call ended on both phones", lambda: alice.call().get("state_code") == 6
                 and bob.call().get("state_code") == 6, 10)
        wait_for("the stand-by without calls",
                 lambda: http_json(STANDBY, "/status")["counts"]["calls"] == 0, 5)
        procs["standby"].send_signal(signal.SIGTERM)
        procs["standby"].wait(timeout=10)
        db = os.path.join(work, "standby", "cdr.sqlite")
        rows = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT end_reason, recovered FROM cdr").fetchall()
        log(f"stand-by CDRs: {rows}")
        if rows != [("normal", 1)]:
            raise Failure(f"CDRs {rows}, want one recovered normal")
        log("PASS")
        return 0
    except Failure as e:
        log(f"FAIL: {e}")
        for name in ("main", "standby"):
            p = os.path.join(work, f"{name}.log")
            if os.path.exists(p):
                log(f"--- {name} log tail ---\n" + "".join(open(p, errors="replace")
                                                          .readlines()[-30:]))
        return 1
    finally:
        for a in agents:
            a.stop()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="./target/release/understudy")
    ap.add_argument("--media", default="bypass", choices=("bypass", "relay"))
    ap.add_argument("--srtp", action="store_true")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    if os.environ.get("NAT_REAL_INNER"):
        sys.exit(inner(binary, a.media, a.srtp))
    rc = 0
    # Bypass needs routers that keep ports (RTP phone to phone); the relay works behind
    # routers that pick a random port per flow (the harder case).
    for media, ports, srtp in (("bypass", "keep", False), ("relay", "random", False),
                               ("relay", "random", True)):
        subprocess.run([BED_SCRIPT, "up", BED], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, NAT_PORTS=ports))
        try:
            rc |= subprocess.call(["ip", "netns", "exec", f"{BED}-core", sys.executable,
                                   os.path.abspath(__file__), "--bin", binary,
                                   "--media", media] + (["--srtp"] if srtp else []),
                                  env=dict(os.environ, NAT_REAL_INNER="1"))
        finally:
            subprocess.run([BED_SCRIPT, "down", BED], check=False)
    sys.exit(rc)


if __name__ == "__main__":
    main()
