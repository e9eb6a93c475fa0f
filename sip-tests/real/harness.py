"""Shared pieces of the real soft-phone tests: processes, the pair's nodes, the phones
(baresip over ctrl_tcp, the pjsua2 agent over loopback UDP), an RTP sniffer, SIP trace parsing.

Standard library only. Every child process is registered in PROCS and killed by its PID.
"""

import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import wave

# ------------------------------------------------------------------------------------------
# Timing of the pair (also written into the config)
KEEPALIVE_MS = 200
MISSED = 3
PROBE_MS = 200

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.3f}] {msg}", flush=True)


class Failure(Exception):
    """A check failed; the message says which and what was seen."""


def wait_for(what, fn, timeout, interval=0.02):
    """Poll `fn` until it returns a truthy value; raise Failure after `timeout` seconds."""
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Failure:
            raise
        except Exception as e:  # noqa: BLE001 - a poll that fails counts as "not yet"
            last = e
        if time.time() >= deadline:
            raise Failure(f"timed out after {timeout:.1f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------
# Processes: every child is registered here and killed by PID on exit.

PROCS = []


def spawn(args, logfile, env=None, **kw):
    f = open(logfile, "ab")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env, **kw)
    f.close()
    PROCS.append(p)
    return p


def kill_all():
    for p in PROCS:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop(p, sig=signal.SIGTERM, timeout=5.0):
    """Signal `p` (by PID), wait up to `timeout`, then SIGKILL. Returns the exit code."""
    if p is None or p.poll() is not None:
        return None if p is None else p.returncode
    try:
        os.kill(p.pid, sig)
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        return p.wait(timeout=5)
    except ProcessLookupError:
        return p.poll()


def on_signal(signum, _frame):
    raise SystemExit(f"signal {signum}")


TAKEN_PORTS = set()  # handed out by this process: never twice


def free_port(kind=socket.SOCK_DGRAM):
    """A port free on 127.0.0.1 right now (the OS picks it)."""
    taken = TAKEN_PORTS
    while True:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in taken and port + 1 not in taken:
            taken.add(port)
            return port


def free_range(width):
    """An even-aligned UDP port range whose ports are all free right now (RTP and RTCP)."""
    taken = TAKEN_PORTS
    for _ in range(200):
        # below the ephemeral range, and clear of the relay default (20000-29999)
        base = random.randrange(10000, 20000 - width) & ~1
        if any(p in taken for p in range(base, base + width)):
            continue
        ok = True
        for port in range(base, base + width, 7):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            taken.update(range(base, base + width))
            return base, base + width - 1
    raise Failure("no free port range for RTP")


def http_json(port, path, timeout=1.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read().decode())


# ------------------------------------------------------------------------------------------
# The pair


def patch_config(text, settings):
    """Apply `section.key=value` settings (TOML values) to a generated config: replace the key
    in its table, or add it there, or add the table before the first [[users]]."""
    for item in settings:
        path, _, value = item.partition("=")
        section, _, key = path.strip().rpartition(".")
        line = f"{key} = {value.strip()}"
        header = f"[{section}]\n"
        if header not in text:
            text = text.replace("\n[[users]]", f"\n{header}{line}\n\n[[users]]", 1)
            continue
        i = text.index(header) + len(header)
        j = text.find("\n[", i)
        j = len(text) if j < 0 else j
        body = text[i:j]
        pat = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
        body = pat.sub(line, body) if pat.search(body) else line + "\n" + body
        text = text[:i] + body + text[j:]
    return text


def node_config(name, home, sip, admin, peer, state_dir, users_extra="", trunks="", settings=(),
                rtp_ports=None):
    """The node's config. `rtp_ports` (lo, hi): media relay on that port range, else bypass.
    `settings` are applied last, so they override everything here."""
    if rtp_ports:
        media = f'mode = "relay"\nrtp_ports = "{rtp_ports[0]}-{rtp_ports[1]}"'
    else:
        media = 'mode = "bypass"'
    return patch_config(_node_config(name, home, sip, admin, peer, state_dir, users_extra, trunks,
                                     media), settings)


def _node_config(name, home, sip, admin, peer, state_dir, users_extra, trunks, media):
    return f"""# written by sip-tests/real/softphones.py
[node]
name = "{name}"
home_role = "{home}"
sip_udp = "127.0.0.1:{sip}"
domain = "pbx.local"

[admin]
listen = "127.0.0.1:{admin}"

[state]
dir = "{state_dir}"

[cdr]
path = "{state_dir}/cdr.sqlite"

[pair]
peer = "127.0.0.1:{peer}"
secret = "real-softphones-pair-secret"
keepalive_ms = {KEEPALIVE_MS}
missed_keepalives = {MISSED}
probe_timeout_ms = {PROBE_MS}
mode = "hot"
dialog_digest = true

[takeover]
query_timeout_ms = 1000
fallback = "none"

[registrar]
min_expires = 60
max_expires = 3600

[media]
{media}

[[users]]
name = "alice"
password = "alice-secret"
{users_extra}
[[users]]
name = "bob"
password = "bob-secret"
{trunks}"""


class Node:
    def __init__(self, binary, workdir, name, home, sip, admin, peer, config_extra, rtp_ports=None):
        self.binary = binary
        self.name = name
        self.sip = sip
        self.admin = admin
        self.rtp_ports = rtp_ports  # the relay's port range (relay mode), else None
        self.state_dir = os.path.join(workdir, name)
        self.cfg = os.path.join(workdir, f"{name}.toml")
        self.log = os.path.join(workdir, f"{name}.log")
        os.makedirs(self.state_dir, exist_ok=True)
        with open(self.cfg, "w") as f:
            f.write(node_config(name, home, sip, admin, peer, self.state_dir, rtp_ports=rtp_ports,
                                **config_extra))
        self.proc = None

    def start(self):
        env = dict(os.environ, RUST_LOG="understudy=debug", NO_COLOR="1")
        self.proc = spawn([self.binary, "run", "--config", self.cfg], self.log, env=env)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def status(self):
        return http_json(self.admin, "/status")

    def calls(self):
        return http_json(self.admin, "/calls")["calls"]

    def registrations(self):
        return {r["aor"]: r["contacts"] for r in http_json(self.admin, "/registrations")["registrations"]}

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def terminate(self):
        return stop(self.proc, signal.SIGTERM, timeout=10)

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()


# ------------------------------------------------------------------------------------------
# RTP counting: a packet sniffer on lo (AF_PACKET, needs CAP_NET_RAW; stdlib only)


class Sniffer(threading.Thread):
    """Records every RTP packet on lo to or from the phones' UDP port ranges: (time, source
    address, destination address). RTCP (payload types 72-76) is left out.

    Bypass mode counts phone-to-phone packets (source in one phone's range, destination in the
    other's). Relay mode counts the packets that reach a phone's range, from whatever source,
    and tells the sources apart (the main's relay range or the stand-by's)."""

    def __init__(self, *ranges):
        super().__init__(daemon=True)
        self.ranges = ranges
        self.packets = []  # (t, (src ip, src port), (dst ip, dst port))
        self.lock = threading.Lock()
        self.running = True
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)

    @staticmethod
    def _in(port, r):
        return r is None or r[0] <= port <= r[1]

    def run(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                break
            now = time.time()
            # On lo every packet shows up twice: as sent (OUTGOING) and as received (HOST).
            if addr[2] == socket.PACKET_OUTGOING or len(data) < 20 or data[9] != 17:
                continue
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8 + 12:
                continue
            sport, dport = struct.unpack("!HH", data[ihl:ihl + 4])
            rtp = data[ihl + 8:]
            if rtp[0] >> 6 != 2 or 72 <= (rtp[1] & 0x7F) <= 76:  # not RTP v2, or RTCP
                continue
            if not any(self._in(sport, r) or self._in(dport, r) for r in self.ranges):
                continue
            src = (socket.inet_ntoa(data[12:16]), sport)
            dst = (socket.inet_ntoa(data[16:20]), dport)
            with self.lock:
                self.packets.append((now, src, dst))

    def stop(self):
        self.running = False
        self.join(timeout=1)
        self.sock.close()

    def select(self, src=None, dst=None, t0=0.0, t1=float("inf")):
        """Packets in [t0, t1) whose source port is in range `src` and destination port in
        range `dst` (None: any)."""
        with self.lock:
            return [p for p in self.packets
                    if t0 <= p[0] < t1 and self._in(p[1][1], src) and self._in(p[2][1], dst)]

    def count(self, src, dst, t0, t1):
        return len(self.select(src, dst, t0, t1))

    def max_gap(self, src, dst, t0, t1):
        """Longest time without a packet in [t0, t1] (edges count as packets)."""
        pts = [t0] + [p[0] for p in self.select(src, dst, t0, t1)] + [t1]
        return max(b - a for a, b in zip(pts, pts[1:]))


# ------------------------------------------------------------------------------------------
# baresip, headless, controlled over ctrl_tcp (JSON netstrings)


def write_wav(path, seconds=120, rate=8000):
    frames = bytearray()
    one = b"".join(
        struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(rate)
    )
    for _ in range(seconds):
        frames += one
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


class Baresip:
    def __init__(self, workdir, main_sip, wav, rtp_range, register=True):
        self.dir = os.path.join(workdir, "baresip")
        os.makedirs(self.dir, exist_ok=True)
        self.sip = free_port()
        self.ctl = free_port(socket.SOCK_STREAM)
        self.rtp_range = rtp_range
        self.log = os.path.join(workdir, "baresip.log")
        self.uri_at_main = f"sip:alice@127.0.0.1:{main_sip}"
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write(
                f"""# written by sip-tests/real/softphones.py
poll_method		epoll
sip_listen		127.0.0.1:{self.sip}
net_interface		127.0.0.1
rtp_ports		{rtp_range[0]}-{rtp_range[1]}
audio_player		aubridge,nil
audio_source		aufile,{wav}
audio_alert		aubridge,nil
module_path		/usr/lib/baresip/modules
module			g711.so
module			aufile.so
module			aubridge.so
module_app		account.so
module_app		menu.so
module_app		ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:{self.ctl}
"""
            )
        regint = 600 if register else 0
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            f.write(
                f"<sip:alice@127.0.0.1:{main_sip}>;auth_pass=alice-secret;answermode=auto;"
                f"regint={regint};pubint=0;mwi=no;audio_codecs=PCMU,PCMA\n"
            )
        open(os.path.join(self.dir, "contacts"), "w").close()
        self.proc = None
        self.sock = None
        self.events = []
        self.responses = {}
        self.cv = threading.Condition()
        self.token = 0

    def start(self):
        """baresip also listens on TCP at its SIP port and TLS at the next one; free_port()
        checks UDP only, so a TCP port taken meanwhile makes baresip exit 98 ("Address already
        in use"). Then it starts again on a fresh port (at most 3 tries)."""
        for attempt in range(3):
            try:
                return self._start_once()
            except Failure:
                try:
                    with open(self.log, errors="replace") as f:
                        in_use = "Address already in use" in f.read()
                except OSError:
                    in_use = False
                if attempt == 2 or not in_use:
                    raise
            old = self.sip
            self.sip = free_port()
            cfg = os.path.join(self.dir, "config")
            with open(cfg) as f:
                text = f.read()
            with open(cfg, "w") as f:
                f.write(text.replace(f"127.0.0.1:{old}\n", f"127.0.0.1:{self.sip}\n"))
            log(f"baresip: port {old} or {old + 1} taken; starting again on {self.sip}")

    def _start_once(self):
        # Line-buffered output (stdbuf), so the SIP trace can be read while it runs.
        line_buffered = ["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []
        self.proc = spawn(line_buffered + ["baresip", "-f", self.dir, "-s"], self.log)

        def connect():
            if self.proc.poll() is not None:
                raise Failure(f"baresip exited with {self.proc.returncode}; see {self.log}")
            return socket.create_connection(("127.0.0.1", self.ctl), timeout=1)

        self.sock = wait_for("baresip ctrl_tcp", connect, 10, 0.1)
        self.sock.settimeout(None)
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    break
                n = int(buf[:colon])
                if len(buf) < colon + 1 + n + 1:
                    break
                msg = json.loads(buf[colon + 1:colon + 1 + n].decode(errors="replace"))
                buf = buf[colon + 1 + n + 1:]
                with self.cv:
                    if msg.get("event"):
                        msg["t"] = time.time()
                        self.events.append(msg)
                    elif msg.get("response"):
                        self.responses[msg.get("token")] = msg
                    self.cv.notify_all()

    def cmd(self, command, params=None, timeout=3.0):
        with self.cv:
            self.token += 1
            tok = f"t{self.token}"
        d = {"command": command, "token": tok}
        if params is not None:
            d["params"] = params
        b = json.dumps(d).encode()
        self.sock.sendall(str(len(b)).encode() + b":" + b + b",")
        deadline = time.time() + timeout
        with self.cv:
            while tok not in self.responses:
                left = deadline - time.time()
                if left <= 0:
                    raise Failure(f"baresip did not answer {command!r} within {timeout} s")
                self.cv.wait(left)
            return self.responses.pop(tok)

    def event(self, etype, after=0.0):
        with self.cv:
            for e in self.events:
                if e.get("type") == etype and e["t"] >= after:
                    return e
        return None

    def rtcp_rx(self, after=0.0):
        """Packets baresip says it received from the peer's SSRC, from the newest CALL_RTCP event."""
        with self.cv:
            evs = [e for e in self.events if e.get("type") == "CALL_RTCP" and e["t"] >= after]
        if not evs:
            return None
        st = evs[-1].get("rtcp_stats", {})
        return {"t": evs[-1]["t"], "rx": st.get("rx", {}).get("sent"), "tx": st.get("tx", {}).get("sent")}

    def quit(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.cmd("quit", timeout=1)
        except Exception:  # noqa: BLE001
            pass
        # It un-REGISTERs on the way out; the registrar (the dead main) will not answer.
        try:
            self.proc.wait(timeout=1.5)
        except subprocess.TimeoutExpired:
            stop(self.proc, signal.SIGKILL)
        if self.sock:
            self.sock.close()

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return re.sub(r"\x1b\[[0-9;]*m", "", f.read())


# ------------------------------------------------------------------------------------------
# The PJSIP phone (pjsua2), as a subprocess with a loopback UDP control socket


class PjsuaPhone:
    def __init__(self, workdir, main_sip, rtp_range):
        self.sip = free_port()
        self.ctl = free_port()
        self.rtp_range = rtp_range
        self.log = os.path.join(workdir, "pjsua.log")
        self.out = os.path.join(workdir, "pjsua-agent.out")
        self.main_sip = main_sip
        self.proc = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.seq = 0

    def start(self):
        self.proc = spawn(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "pjsua_agent.py"),
             "--sip-port", str(self.sip), "--ctl-port", str(self.ctl),
             "--registrar", f"127.0.0.1:{self.main_sip}", "--user", "bob",
             "--password", "bob-secret", "--rtp-port", str(self.rtp_range[0]),
             "--rtp-range", str(self.rtp_range[1] - self.rtp_range[0] + 1), "--log", self.log],
            self.out,
        )

        def ping():
            if self.proc.poll() is not None:
                raise Failure(f"pjsua agent exited with {self.proc.returncode}; see {self.out}")
            try:
                return self.cmd("status", timeout=0.3)
            except Failure:
                return None

        wait_for("pjsua agent", ping, 15, 0.1)

    def cmd(self, command, timeout=2.0, **kw):
        self.seq += 1
        req = dict(kw, cmd=command, id=self.seq)
        self.sock.sendto(json.dumps(req).encode(), ("127.0.0.1", self.ctl))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise Failure(f"pjsua agent did not answer {command!r} within {timeout} s")
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            rep = json.loads(data.decode())
            if rep.get("id") == self.seq:
                if rep.get("error"):
                    raise Failure(f"pjsua agent: {command}: {rep['error']}")
                return rep

    def status(self):
        return self.cmd("status")

    def quit(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.cmd("quit", timeout=1)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            stop(self.proc, signal.SIGKILL)

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


# ------------------------------------------------------------------------------------------
# SIP traces of the phones


def sip_messages(text, port_a, port_b):
    """SIP messages from a baresip `-s` trace exchanged between two local ports."""
    out = []
    for m in re.finditer(r"#\n(UDP|TCP) (\S+) -> (\S+)\n(.*?)(?=\n#\n|\Z)", text, re.S):
        src, dst, body = m.group(2), m.group(3), m.group(4)
        if {src.rsplit(":", 1)[1], dst.rsplit(":", 1)[1]} & {str(port_a), str(port_b)}:
            out.append((src, dst, body.strip()))
    return out


def pjsua_messages(text, port):
    """SIP messages in a pjsua log sent to or received from 127.0.0.1:`port`."""
    out = []
    pat = r"(TX|RX) \d+ bytes (?:Request|Response) msg [^\n]*? (to|from) UDP 127\.0\.0\.1:(\d+):\n(.*?)\n--end msg--"
    for m in re.finditer(pat, text, re.S):
        if int(m.group(3)) == port:
            out.append((m.group(1), m.group(4).strip()))
    return out


def first_line(msg):
    return msg.split("\n", 1)[0].strip()


def header(msg, name):
    m = re.search(rf"^{name}:\s*(.*)$", msg, re.M | re.I)
    return m.group(1).strip() if m else None


def has_sdp(msg):
    cl = header(msg, "Content-Length")
    return cl is not None and cl.isdigit() and int(cl) > 0 and "\nv=0" in msg


def sdp_note(msg):
    if not has_sdp(msg):
        return "no SDP"
    m = re.search(r"^m=audio (\d+)", msg, re.M)
    c = re.search(r"^c=IN IP4 (\S+)", msg, re.M)
    return f"SDP {c.group(1) if c else '?'}:{m.group(1) if m else '?'}"


def check_sdp_addresses(texts):
    bad = set()
    for t in texts:
        for m in re.finditer(r"^c=IN IP4 (\S+)", t, re.M):
            if not m.group(1).startswith("127."):
                bad.add(m.group(1))
    return bad
