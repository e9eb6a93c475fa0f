"""Two more real soft-phones for the pair tests (four.py), and a common face for all four.

  * LinphonePhone: linphone-daemon (Debian linphone-cli, liblinphone 5.1), controlled over its
    Unix socket (--pipe): one text command, one "Status: Ok|Error" response; events are polled
    with pop-event. It has no sound card here; its RTP comes from the in-call player
    (`incall-player-start <wav> <call>`), which the driver (re)starts every time the call
    reaches StreamsRunning (the streams are re-created on hold/resume and on re-INVITEs).
  * TwinklePhone: twinkle-console (Debian twinkle-console, Twinkle 1.10.2), controlled over
    stdin (its CLI commands), state read from its stdout, SIP trace from ~/.twinkle/twinkle.log.
    HOME is a per-instance directory. Its microphone is an ALSA `file` PCM whose input is a
    FIFO that a thread here feeds with a 440 Hz tone at real-time rate (the ALSA `null` PCM
    alone is not clocked: twinkle then spins at 100 % CPU).
  * BaresipPhone / PjsuaPhoneX: the harness's baresip and pjsua agent with the same face.

Every phone has: name, user, sip, rtp_range, start(), dial(uri), established(since),
ended(since), hold(), resume(), hangup(), transfer(target), transfer_attended(other_call),
call_state(), stop() (alias quit()), trace() -> [(dir "in"/"out", peer "ip:port", message)],
log_text(). Unsupported operations raise Unsupported with what the client lacks.

Standard library only; every child is registered in harness.PROCS.
"""

import errno
import fcntl
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

from harness import (
    PROCS,
    Baresip,
    Failure,
    PjsuaPhone,
    free_port,
    spawn,
    stop,
    wait_for,
)


class Unsupported(Failure):
    """The client cannot do this headless (the message says why)."""


# ------------------------------------------------------------------------------------------
# SIP traces


def baresip_trace(text, own_port):
    """baresip -s: '#\\nUDP src -> dst\\n<msg>'."""
    out = []
    for m in re.finditer(r"#\n(?:UDP|TCP) (\S+) -> (\S+)\n(.*?)(?=\n#\n|\Z)", text, re.S):
        src, dst, body = m.group(1), m.group(2), m.group(3).strip()
        if src.endswith(f":{own_port}"):
            out.append(("out", dst, body))
        else:
            out.append(("in", src, body))
    return out


def pjsua_trace(text):
    """pjsua log level 5: 'TX|RX n bytes ... to|from UDP ip:port:\\n<msg>\\n--end msg--'."""
    out = []
    pat = (r"(TX|RX) \d+ bytes (?:Request|Response) msg [^\n]*? (?:to|from) UDP "
           r"(\d+\.\d+\.\d+\.\d+:\d+):\n(.*?)\n--end msg--")
    for m in re.finditer(pat, text, re.S):
        out.append(("out" if m.group(1) == "TX" else "in", m.group(2), m.group(3).strip()))
    return out


def twinkle_trace(text):
    """twinkle.log with log_show_sip: '+++ ... ::send_sip_udp\\nSend to: udp:ip:port\\n<msg>\\n---'."""
    out = []
    pat = r"^(Send to|Received from): udp:(\d+\.\d+\.\d+\.\d+:\d+)\n(.*?)\n---$"
    for m in re.finditer(pat, text, re.S | re.M):
        out.append(("out" if m.group(1) == "Send to" else "in", m.group(2), m.group(3).strip()))
    return out


_LP_TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d{3} "


def linphone_trace(text):
    """liblinphone log (belle-sip at message level): 'channel [..]: message sent to
    [UDP://ip:port], size: [n] bytes\\n<msg>' / 'received [n] new bytes from [UDP://ip:port]:'."""
    out = []
    pat = (rf"^{_LP_TS}belle-sip-message-channel \[[^\]]*\]: (message sent to|received \[\d+\] new "
           rf"bytes from) \[UDP://(\d+\.\d+\.\d+\.\d+:\d+)\][^\n]*\n(.*?)(?=^{_LP_TS}|\Z)")
    for m in re.finditer(pat, text, re.S | re.M):
        body = m.group(3).strip()
        if not body or not re.match(r"^(SIP/2\.0 \d{3}|[A-Z]+ \S+ SIP/2\.0)", body):
            continue  # keep-alives (CRLF) and continuation chunks
        out.append(("out" if m.group(1).startswith("message") else "in", m.group(2), body))
    return out


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


# ------------------------------------------------------------------------------------------
# baresip and pjsua with the common face


class BaresipPhone(Baresip):
    """harness.Baresip (user alice) with the common face. baresip 1.0 menu commands over
    ctrl_tcp: dial, hold, resume, hangup, transfer <uri> (REFER). It has no attended transfer
    (no REFER with Replaces: the atransfer* commands came with baresip 2.x)."""

    name = "baresip"
    user = "alice"

    def __init__(self, workdir, main_sip, wav, rtp_range, user="alice"):
        if user != "alice":
            raise Failure("harness.Baresip registers as alice only")
        super().__init__(workdir, main_sip, wav, rtp_range)

    def _ok(self, command, params=None):
        r = self.cmd(command, params)
        if not r.get("ok"):
            raise Failure(f"baresip {command} {params or ''}: {r}")
        return r

    def dial(self, uri):
        self._ok("dial", uri)

    def established(self, since=0.0):
        return self.event("CALL_ESTABLISHED", since) is not None

    def ended(self, since=0.0):
        return self.event("CALL_CLOSED", since) is not None

    def call_state(self):
        last = None
        with self.cv:
            for e in self.events:
                if e.get("type", "").startswith("CALL_") and e["type"] != "CALL_RTCP":
                    last = e["type"]
        return last

    def hold(self):
        self._ok("hold")

    def resume(self):
        self._ok("resume")

    def hangup(self):
        self._ok("hangup")

    def transfer(self, target):
        self._ok("transfer", target)

    def transfer_attended(self, other_call=None):
        raise Unsupported("baresip 1.0 (Debian baresip-core) has no attended transfer: its menu "
                          "has only 'transfer <uri>' (blind REFER); REFER with Replaces came with "
                          "the atransferstart/atransferexec commands of baresip 2.x")

    def stop(self):
        self.quit()

    def trace(self):
        return baresip_trace(self.log_text(), self.sip)


class PjsuaPhoneX(PjsuaPhone):
    """harness.PjsuaPhone (user bob) with the common face. Hold, resume and transfers use the
    agent's commands hold, resume, xfer and xfer_replaces (pjsua2 Call.setHold, Call.reinvite
    with PJSUA_CALL_UNHOLD, Call.xfer, Call.xferReplaces); dial_replaces() places a call whose
    INVITE carries a Replaces header (RFC 3891)."""

    name = "pjsua"
    user = "bob"

    def __init__(self, workdir, main_sip, wav, rtp_range, user="bob"):
        if user != "bob":
            raise Failure("harness.PjsuaPhone registers as bob only")
        super().__init__(workdir, main_sip, rtp_range)

    def dial(self, uri):
        self.cmd("dial", uri=uri)

    def dial_replaces(self, uri, replaces):
        """INVITE `uri` with `Replaces: <replaces>` (call-id;to-tag=..;from-tag=..)."""
        self.cmd("dial_replaces", uri=uri, replaces=replaces)

    def _call(self):
        return self.status()["call"] or {}

    def established(self, since=0.0):
        c = self._call()
        return c.get("state") == "CONFIRMED" and (c.get("confirmed_at") or 0) >= since

    def ended(self, since=0.0):
        c = self._call()
        return c.get("state") == "DISCONNECTED" and (c.get("ended_at") or 0) >= since

    def call_state(self):
        return self._call().get("state")

    def calls(self):
        return self.cmd("calls")["calls"]

    def hold(self):
        self.cmd("hold")

    def resume(self):
        self.cmd("resume")

    def transfer(self, target):
        self.cmd("xfer", uri=target)

    def transfer_attended(self, other_call=None, call=None):
        """REFER on call `call` (agent index; default the newest) with Replaces naming call
        `other_call` (agent index)."""
        kw = {} if call is None else {"call": call}
        self.cmd("xfer_replaces", other=other_call, **kw)

    def hangup(self):
        self.cmd("hangup")

    def stop(self):
        self.quit()

    def trace(self):
        return pjsua_trace(self.log_text())


# ------------------------------------------------------------------------------------------
# linphone-daemon


class LinphonePhone:
    """liblinphone's linphone-daemon, headless, over its --pipe Unix socket."""

    name = "linphone"

    def __init__(self, workdir, main_sip, wav, rtp_range, user):
        self.user = user
        self.password = f"{user}-secret"
        self.main_sip = main_sip
        self.wav = wav
        self.rtp_range = rtp_range
        self.sip = free_port()
        self.home = os.path.join(workdir, "linphone")
        os.makedirs(os.path.join(self.home, ".local", "share", "linphone"), exist_ok=True)
        self.cfg = os.path.join(self.home, "linphonerc")
        self.log = os.path.join(workdir, "linphone.log")
        self.out = os.path.join(workdir, "linphone.out")
        # The daemon makes its socket /tmp/<name>
        self.pipe_name = f"understudy-linphone-{os.getpid()}-{self.sip}"
        self.pipe_path = f"/tmp/{self.pipe_name}"
        with open(self.cfg, "w") as f:
            f.write(f"""# written by sip-tests/real/phones_more.py
[sip]
sip_port={self.sip}
sip_tcp_port=0
sip_tls_port=0
bind_address=127.0.0.1
guess_hostname=1
register_only_when_network_is_up=0
use_ipv6=0
[rtp]
audio_rtp_port={rtp_range[0]}-{rtp_range[1]}
bind_address=127.0.0.1
[net]
firewall_policy=0
[sound]
echocancellation=0
[video]
enabled=0
capture=0
display=0
""")
        self.proc = None
        self.sock = None
        self.lock = threading.Lock()
        self.events = []  # (t, state, call id)
        self.calls = {}  # call id -> last state
        self.call_id = None
        self.player_starts = []  # (t, call id, response)
        self.running = False
        self.errors = []

    # --- control

    def start(self):
        if os.path.exists(self.pipe_path):
            os.unlink(self.pipe_path)
        env = dict(os.environ, HOME=self.home)
        self.proc = spawn(["linphone-daemon", "--config", self.cfg, "--pipe", self.pipe_name,
                           "--log", self.log, "--auto-answer", "--disable-stats-events"],
                          self.out, env=env)

        def connect():
            if self.proc.poll() is not None:
                raise Failure(f"linphone-daemon exited with {self.proc.returncode}; see {self.out}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.pipe_path)
            return s

        self.sock = wait_for("linphone-daemon socket", connect, 10, 0.1)
        self.sock.settimeout(5)
        # G.711 only, like the other phones
        self.cmd("audio-codec-disable ALL")
        self.cmd("audio-codec-enable 0")
        self.cmd("audio-codec-enable 8")
        r = self.cmd(f"register sip:{self.user}@127.0.0.1:{self.main_sip} sip:127.0.0.1:{self.main_sip} "
                     f"{self.password} {self.user} pbx.local")
        self.running = True
        threading.Thread(target=self._events, daemon=True).start()
        return r

    def cmd(self, line, timeout=5.0, check=True):
        """One command, one response (the daemon reads one command per socket read, so they
        are never pipelined). Returns the response's fields as a dict (+ 'raw')."""
        with self.lock:
            self.sock.settimeout(timeout)
            self.sock.sendall(line.encode())
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise Failure(f"linphone-daemon did not answer {line!r} within {timeout} s")
            if not data:
                raise Failure(f"linphone-daemon closed its socket on {line!r}; see {self.out}")
            self.sock.setblocking(False)
            try:
                while True:
                    more = self.sock.recv(65536)
                    if not more:
                        break
                    data += more
            except (BlockingIOError, InterruptedError):
                pass
            finally:
                self.sock.setblocking(True)
        text = data.decode(errors="replace")
        fields = {"raw": text}
        for ln in text.splitlines():
            k, sep, v = ln.partition(": ")
            if sep and k not in fields:
                fields[k] = v.strip()
        if check and fields.get("Status") != "Ok":
            raise Failure(f"linphone-daemon {line!r}: {text.strip()!r}")
        return fields

    def _events(self):
        """Poll pop-event; track call states; (re)start the in-call player on StreamsRunning."""
        while self.running:
            try:
                r = self.cmd("pop-event", timeout=2, check=False)
            except (Failure, OSError) as e:
                if self.running:
                    self.errors.append(f"pop-event: {e}")
                return
            ev = re.search(r"Event: (\S+)", r["raw"])
            cid = re.search(r"^Id: (\d+)", r["raw"], re.M)
            if not ev:
                time.sleep(0.05)
                continue
            state, cid = ev.group(1).replace("LinphoneCall", ""), int(cid.group(1)) if cid else None
            self.events.append((time.time(), state, cid))
            if cid is not None:
                self.calls[cid] = state
                if state in ("IncomingReceived", "OutgoingInit", "OutgoingProgress"):
                    self.call_id = cid
            if state == "StreamsRunning" and cid is not None:
                # No sound card: without the player the call sends no RTP.
                try:
                    rr = self.cmd(f"incall-player-start {self.wav} {cid}", check=False)
                    self.player_starts.append((time.time(), cid, rr.get("Status")))
                except (Failure, OSError) as e:
                    self.errors.append(f"incall-player-start: {e}")

    # --- the common face

    def registered(self):
        r = self.cmd("register-status ALL", check=False)
        return "LinphoneRegistrationOk" in r["raw"]

    def dial(self, uri):
        r = self.cmd(f"call {uri}")
        self.call_id = int(r["Id"])

    def _seen(self, states, since):
        return any(t >= since and s in states for t, s, _ in self.events)

    def established(self, since=0.0):
        return self._seen(("StreamsRunning",), since)

    def ended(self, since=0.0):
        return self._seen(("End", "Released", "Error"), since)

    def call_state(self):
        return self.calls.get(self.call_id)

    def hold(self):
        self.cmd(f"call-pause {self.call_id}")

    def resume(self):
        self.cmd(f"call-resume {self.call_id}")

    def hangup(self):
        self.cmd(f"terminate {self.call_id}")

    def transfer(self, target):
        """Blind transfer: REFER with Refer-To: target."""
        self.cmd(f"call-transfer {self.call_id} {target}")

    def transfer_attended(self, other_call, call=None):
        """Attended transfer of `call` (default: the current one) to the peer of `other_call`
        (daemon call ids): REFER to this call's peer with Refer-To: the other peer's Contact
        and ?Replaces= the other call's dialog (linphone_call_transfer_to_another)."""
        self.cmd(f"call-transfer {call or self.call_id} {other_call}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            self.running = False
            return
        try:
            self.cmd("quit", timeout=1, check=False)
        except (Failure, OSError):
            pass
        self.running = False
        try:
            self.proc.wait(timeout=1.5)  # it un-REGISTERs at the (maybe dead) main
        except subprocess.TimeoutExpired:
            stop(self.proc, signal.SIGKILL)
        if self.sock:
            self.sock.close()
        if os.path.exists(self.pipe_path):
            os.unlink(self.pipe_path)

    quit = stop

    def log_text(self):
        return read_text(self.log)

    def trace(self):
        return linphone_trace(self.log_text())


# ------------------------------------------------------------------------------------------
# twinkle-console


class MicFeeder(threading.Thread):
    """Writes a 440 Hz tone (8 kHz, S16_LE, mono) into a FIFO in real time, 20 ms at a time;
    drops what does not fit (the pipe is shrunk to one page, so the reader never gets more than
    ~0.25 s of backlog). Opened O_RDWR so it never blocks and never sees ENXIO."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self.fd, 1031, 4096)  # F_SETPIPE_SZ
        except OSError:
            pass
        self.frame = b"".join(struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * i / 8000)))
                              for i in range(160))
        self.running = True

    def run(self):
        t = time.time()
        while self.running:
            try:
                os.write(self.fd, self.frame)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    return
            t += 0.02
            time.sleep(max(0.0, t - time.time()))

    def stop(self):
        self.running = False
        self.join(timeout=1)
        os.close(self.fd)


class TwinklePhone:
    """twinkle-console, headless: CLI commands on stdin, HOME = its own directory."""

    name = "twinkle"

    def __init__(self, workdir, main_sip, wav, rtp_range, user):
        self.user = user
        self.main_sip = main_sip
        self.rtp_range = rtp_range
        self.sip = free_port()
        self.home = os.path.join(workdir, "twinkle")
        tdir = os.path.join(self.home, ".twinkle")
        os.makedirs(tdir, exist_ok=True)
        self.log = os.path.join(tdir, "twinkle.log")
        self.out = os.path.join(workdir, "twinkle.out")
        self.fifo = os.path.join(self.home, "mic.fifo")
        with open(os.path.join(self.home, ".asoundrc"), "w") as f:
            f.write(f"""# written by sip-tests/real/phones_more.py: the microphone is a FIFO fed in real time
pcm.twinklemic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{self.fifo}"
    format "raw"
}}
""")
        with open(os.path.join(tdir, "twinkle.sys"), "w") as f:
            f.write(f"""# written by sip-tests/real/phones_more.py
dev_ringtone=alsa:null
dev_speaker=alsa:null
dev_mic=alsa:twinklemic
validate_audio_dev=no
log_max_size=20
log_show_sip=yes
log_show_debug=no
sip_port={self.sip}
rtp_port={rtp_range[0]}
play_ringtone=no
play_ringback=no
call_waiting=yes
""")
        self.profile = f"{user}.cfg"
        with open(os.path.join(tdir, self.profile), "w") as f:
            f.write(f"""# written by sip-tests/real/phones_more.py
user_name={user}
user_domain=127.0.0.1:{main_sip}
user_display={user} (twinkle)
auth_realm=pbx.local
auth_name={user}
auth_pass={user}-secret
registrar=127.0.0.1:{main_sip}
registration_time=600
register_at_startup=yes
codecs=g711u,g711a
hold_variant=rfc3264
ext_replaces=yes
allow_refer=yes
ask_user_to_refer=no
referrer_hold=no
speex_dsp_vad=no
speex_dsp_agc=no
speex_dsp_aec=no
speex_dsp_nrd=no
pres_publish_startup=no
""")
        self.proc = None
        self.feeder = None
        self.lines = []  # (t, stdout line)
        self.lock = threading.Lock()

    def start(self):
        self.feeder = MicFeeder(self.fifo)
        self.feeder.start()
        env = dict(os.environ, HOME=self.home)
        line_buffered = ["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []
        self.proc = subprocess.Popen(line_buffered + ["twinkle-console", self.profile],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.home)
        PROCS.append(self.proc)
        threading.Thread(target=self._reader, daemon=True).start()
        # Twinkle loads its whole UI library first: on a busy 2-core machine that has taken
        # over 10 s (a test.sh run next to a release build).
        wait_for("twinkle prompt", lambda: self._said(r"Twinkle>") or self._dead(), 30, 0.05)
        self._dead()
        self.send("auto_answer -a on")
        wait_for("twinkle auto answer on", lambda: self._said(r"Auto answer enabled"), 5, 0.05)

    def _dead(self):
        if self.proc.poll() is not None:
            raise Failure(f"twinkle-console exited with {self.proc.returncode}; see {self.out}")
        return False

    def _reader(self):
        with open(self.out, "ab") as f:
            for raw in self.proc.stdout:
                f.write(raw)
                f.flush()
                with self.lock:
                    self.lines.append((time.time(), raw.decode(errors="replace").rstrip("\n")))

    def _said(self, pattern, since=0.0):
        with self.lock:
            return any(t >= since and re.search(pattern, ln) for t, ln in self.lines)

    def send(self, line):
        self._dead()
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    # --- the common face

    def registered(self):
        return self._said(r"registration succeeded")

    def dial(self, uri):
        self.send(f"call {uri}")

    def established(self, since=0.0):
        return self._said(r"Line 1: (far end answered call|call established)", since)

    def ended(self, since=0.0):
        return self._said(r"Line 1: (far end ended call|call ended|call failed|far end cancelled)",
                          since)

    def call_state(self):
        with self.lock:
            ls = [ln for _, ln in self.lines if ln.startswith("Line 1:")]
        return ls[-1] if ls else None

    def hold(self):
        self.send("hold")

    def resume(self):
        self.send("retrieve")

    def hangup(self):
        self.send("bye")

    def transfer(self, target):
        """Blind transfer: 'transfer <dst>' (REFER, Refer-To: dst)."""
        self.send(f"transfer {target}")

    def transfer_attended(self, other_call=None, consult_done=False):
        """Attended transfer (REFER with Replaces), three forms of the CLI's transfer command:
          other_call = a URI:  'transfer -c <uri>' holds line 1 and calls <uri> on line 2
                               (the consultation call);
          consult_done=True:   'transfer -c' then transfers line 1's party to line 2's party;
          otherwise:           'transfer -l' transfers the active line's call to the party on
                               the other line (both calls set up beforehand)."""
        if other_call:
            self.send(f"transfer -c {other_call}")
        elif consult_done:
            self.send("transfer -c")
        else:
            self.send("transfer -l")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send("quit")
            except (Failure, OSError):
                pass
            try:
                self.proc.wait(timeout=1.5)  # it de-registers at the (maybe dead) main
            except subprocess.TimeoutExpired:
                stop(self.proc, signal.SIGKILL)
        if self.feeder:
            self.feeder.stop()
            self.feeder = None

    quit = stop

    def log_text(self):
        # twinkle.log rotates to twinkle.log.old at log_max_size MB
        return read_text(self.log + ".old") + read_text(self.log)

    def trace(self):
        return twinkle_trace(self.log_text())


PHONES = {"baresip": BaresipPhone, "pjsua": PjsuaPhoneX, "linphone": LinphonePhone,
          "twinkle": TwinklePhone}
