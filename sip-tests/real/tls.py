#!/usr/bin/env python3
"""Two real PJSIP phones over SIP/TLS keep their call across a kill -9 of the main.

A test CA and a node certificate for 127.0.0.1 (openssl); both nodes listen on TLS with it.
Each phone (pjsua2 with a TLS transport, verifying the node's certificate against the CA)
registers over TLS at both nodes, as RFC 5626 flows to each node or a phone configured with a
second server would; alice calls bob through the main over TLS; the main is killed; the
stand-by re-binds both legs over the TLS connections the phones opened to it, RTP goes on,
alice's hang-up ends the call there with one CDR (recovered, normal). Then a node started with
a certificate path that does not exist must refuse to start and name node.tls_cert.

    sip-tests/real/tls.py --bin ./target/release/understudy
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Failure, Node, free_port, free_range, http_json, kill_all, log, spawn,  # noqa: E402
                     stop, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))


def certificates(work):
    """A CA and a certificate for 127.0.0.1 signed by it; returns (ca, cert, key) paths."""
    ca_key, ca = os.path.join(work, "ca.key"), os.path.join(work, "ca.pem")
    key, csr, cert = (os.path.join(work, n) for n in ("node.key", "node.csr", "node.pem"))
    ext = os.path.join(work, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n"
                "keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n")
    run = lambda *args: subprocess.run(["openssl", *args], check=True,  # noqa: E731
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=understudy test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


class Phone:
    """A pjsua2 agent on TLS, registered at both nodes."""

    def __init__(self, work, user, registrars, ca):
        self.user = user
        self.ctl = free_port()
        self.log = os.path.join(work, f"{user}-pjsua.log")
        rtp = free_range(40)
        import socket
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.seq = 0
        self.proc = spawn(
            [sys.executable, os.path.join(HERE, "pjsua_agent.py"), "--sip-port", str(free_port()),
             "--tls-port", str(free_port()), "--ca", ca, "--ctl-port", str(self.ctl),
             "--registrar", registrars[0], "--registrar2", registrars[1], "--user", user,
             "--password", f"{user}-secret", "--rtp-port", str(rtp[0]),
             "--rtp-range", str(rtp[1] - rtp[0] + 1), "--log", self.log],
            os.path.join(work, f"{user}-agent.out"))
        wait_for(f"{user}'s pjsua agent", lambda: self.cmd("status", timeout=0.3), 15, 0.1)

    def cmd(self, command, timeout=2.0, **kw):
        self.seq += 1
        self.sock.sendto(json.dumps(dict(kw, cmd=command, id=self.seq)).encode(),
                         ("127.0.0.1", self.ctl))
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sock.settimeout(max(deadline - time.time(), 0.01))
            try:
                rep = json.loads(self.sock.recv(65536).decode())
            except OSError:
                break
            if rep.get("id") == self.seq:
                if rep.get("error"):
                    raise Failure(f"{self.user}: {command}: {rep['error']}")
                return rep
        # Not (yet) answering: a poll in wait_for tries again.
        raise TimeoutError(f"{self.user}: no answer to {command}")

    def call(self):
        return self.cmd("status").get("call") or {}

    def rx(self):
        return self.call().get("rx", 0)


def tls_settings(port, cert, key):
    return [f'node.sip_tls="127.0.0.1:{port}"', f'node.tls_cert="{cert}"',
            f'node.tls_key="{key}"']


def takeover_over_tls(binary, work):
    ca, cert, key = certificates(work)
    sips = {n: (free_port(), free_port(), free_port()) for n in ("main", "standby")}
    nodes = {}
    for name, home, peer in (("main", "main", "standby"), ("standby", "standby", "main")):
        sip, admin, tls = sips[name]
        nodes[name] = Node(binary, work, name, home, sip, admin, sips[peer][0],
                           {"settings": tls_settings(tls, cert, key)})
        nodes[name].start()
    main, sb = nodes["main"], nodes["standby"]
    wait_for("the pair", lambda: main.status()["role"] == "active"
             and sb.status()["peer"]["state"] == "alive", 15)
    regs = [f"127.0.0.1:{sips[n][2]};transport=tls" for n in ("main", "standby")]
    alice, bob = Phone(work, "alice", regs, ca), Phone(work, "bob", regs, ca)
    phones = [alice, bob]
    try:
        for p in phones:
            wait_for(f"{p.user} registered over TLS at both nodes", lambda p=p: (
                lambda r: len(r) == 2 and all(x and x["code"] == 200 for x in r))(
                    p.cmd("status", timeout=0.5)["registrations"]), 20, 0.2)
        regs_sb = http_json(sb.admin, "/registrations")["registrations"]
        own = [c for r in regs_sb for c in r["contacts"] if c["own_flow"]]
        log(f"stand-by's own TLS flows: {[c['source'] for c in own]}")
        if not own or not all(c["source"].startswith("tls:") for c in own):
            raise Failure(f"the stand-by's own flows are not TLS: {own}")
        alice.cmd("dial", uri=f"sip:bob@127.0.0.1:{sips['main'][2]};transport=tls")
        wait_for("the call confirmed on both phones", lambda: alice.call().get("state_code") == 5
                 and bob.call().get("state_code") == 5, 10)
        calls = http_json(main.admin, "/calls")["calls"]
        legs = [(calls[0][s]["transport"]) for s in ("a", "b")] if calls else []
        log(f"the main's legs: {legs}")
        if legs != ["tls", "tls"]:
            raise Failure(f"the call's legs at the main are not TLS: {calls}")
        wait_for("the stand-by knowing the call",
                 lambda: sb.status()["digest"]["calls_known"] >= 1, 5)
        base = (alice.rx(), bob.rx())
        wait_for("RTP both ways before the kill",
                 lambda: alice.rx() > base[0] + 50 and bob.rx() > base[1] + 50, 10)
        log("call up over TLS through the main; kill -9 of the main")
        main.proc.kill()
        main.proc.wait()
        t0 = time.time()
        st = wait_for("the takeover done", lambda: (lambda s: s if s["role"] == "active"
                      and s.get("takeover") and not s["takeover"]["in_progress"] else None)(
                          sb.status()), 20)
        rep = st["takeover"]
        log(f"takeover report {time.time() - t0:.2f} s after the kill: {json.dumps(rep)}")
        if rep["recovered"] != 1:
            raise Failure(f"takeover report: {rep}")
        for p in phones:
            wait_for(f"{p.user} re-bound to the stand-by over TLS",
                     lambda p=p: f":{sips['standby'][2]}" in p.call().get("remote_contact", "")
                     and "transport=tls" in p.call().get("remote_contact", ""), 10)
        calls = http_json(sb.admin, "/calls")["calls"]
        legs = [(calls[0][s]["transport"]) for s in ("a", "b")] if calls else []
        if legs != ["tls", "tls"]:
            raise Failure(f"the re-bound call's legs are not TLS: {calls}")
        base = (alice.rx(), bob.rx())
        wait_for("RTP both ways after the re-bind",
                 lambda: alice.rx() > base[0] + 50 and bob.rx() > base[1] + 50, 10)
        log("both phones re-bound over TLS; alice hangs up")
        alice.cmd("hangup")
        wait_for("the call ended on both phones", lambda: alice.call().get("state_code") == 6
                 and bob.call().get("state_code") == 6, 10)
        wait_for("the stand-by without calls", lambda: sb.status()["counts"]["calls"] == 0, 5)
        stop(sb.proc)
        rows = sqlite3.connect(f"file:{sb.state_dir}/cdr.sqlite?mode=ro", uri=True).execute(
            "SELECT end_reason, recovered FROM cdr").fetchall()
        log(f"stand-by CDRs: {rows}")
        if rows != [("normal", 1)]:
            raise Failure(f"CDRs {rows}, want one recovered normal")
    finally:
        for p in phones:
            try:
                p.cmd("quit", timeout=1)
            except (Failure, TimeoutError):
                pass
            stop(p.proc)
        for n in nodes.values():
            if n.alive():
                stop(n.proc)


def bad_certificate_path(binary, work):
    sip, admin, tls = free_port(), free_port(), free_port()
    n = Node(binary, work, "badcert", "main", sip, admin, free_port(),
             {"settings": tls_settings(tls, os.path.join(work, "missing.pem"),
                                       os.path.join(work, "node.key"))})
    out = subprocess.run([binary, "run", "--config", n.cfg], capture_output=True, text=True,
                         timeout=20)
    text = out.stdout + out.stderr
    if out.returncode == 0 or "node.tls_cert" not in text:
        raise Failure(f"a missing certificate: exit {out.returncode}, output {text[-400:]!r}")
    log(f"a missing certificate refused: {text.strip().splitlines()[-1][:160]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="./target/release/understudy")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    work = tempfile.mkdtemp(prefix="understudy-tls-real-")
    try:
        takeover_over_tls(binary, work)
        bad_certificate_path(binary, work)
    except Failure as e:
        log(f"FAIL: {e} (logs in {work})")
        sys.exit(1)
    finally:
        kill_all()
    log("PASS")


if __name__ == "__main__":
    main()
