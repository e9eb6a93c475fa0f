#!/usr/bin/env python3
"""Keep the smart endpoints' per-phone dialog files up to date from SIPp logs.

The smart endpoints (smart-uac.xml, smart-uas.xml) answer a dialog SUBSCRIBE
with a NOTIFY whose body includes DIR/<phone>.xml (SIPp's [file] keyword, read
when the NOTIFY is sent). With -set publish 1 they write that file themselves
through <exec>, which costs a fork and a shell per call (about 3 ms of CPU on
the project box: too much at hundreds of calls per second). With -set publish
log they only write one line per call to their SIPp log file
(-trace_logs -log_file FILE):

    DIALOG <phone> <dialog ...>...</dialog>    the call is confirmed
    GONE <phone>                               the call is over

and this helper follows those log files and rewrites DIR/<phone>.xml (write to
a temporary file, then rename: a NOTIFY never reads half a file).

    smart-dialogs.py --qdir DIR [--init c:N,u:N] LOG [LOG...]

--init creates empty files first (DIR/_trunk.xml, DIR/c1.xml..DIR/cN.xml, ...):
SIPp exits with a fatal error when a [file] is missing, so every phone the new
active may ask must have one. Log files that do not exist yet are waited for.
Runs until SIGTERM/SIGINT; then prints "smart-dialogs: published=.. gone=.."
on stderr. With --status FILE it also rewrites FILE (one line
"published=P gone=G live=L") after every batch, for scripts that wait until
all calls are published.
"""

import argparse
import os
import signal
import sys
import time


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qdir", required=True)
    ap.add_argument("--init", default="", help="PREFIX:COUNT[,PREFIX:COUNT...]: create empty files")
    ap.add_argument("--status", help="rewrite this file with the counters")
    ap.add_argument("--poll", type=float, default=0.02, help="seconds between reads (0.02)")
    ap.add_argument("logs", nargs="+")
    a = ap.parse_args()

    os.makedirs(a.qdir, exist_ok=True)
    write(os.path.join(a.qdir, "_trunk.xml"), "")
    for spec in filter(None, a.init.split(",")):
        prefix, count = spec.split(":")
        for k in range(1, int(count) + 1):
            write(os.path.join(a.qdir, "%s%d.xml" % (prefix, k)), "")

    if a.status:
        write(a.status, "published=0 gone=0 live=0\n")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    files = {p: None for p in a.logs}  # path -> open file
    rest = {p: "" for p in a.logs}
    live = set()
    published = gone = 0
    while not stop:
        busy = False
        for p in a.logs:
            f = files[p]
            if f is None:
                try:
                    f = files[p] = open(p, "r", errors="replace")
                except FileNotFoundError:
                    continue
            chunk = f.read()
            if not chunk:
                continue
            busy = True
            lines = (rest[p] + chunk).split("\n")
            rest[p] = lines.pop()
            for line in lines:
                if line.startswith("DIALOG "):
                    parts = line.split(" ", 2)
                    if len(parts) == 3 and "/" not in parts[1]:
                        write(os.path.join(a.qdir, parts[1] + ".xml"), parts[2] + "\n")
                        live.add(parts[1])
                        published += 1
                elif line.startswith("GONE "):
                    phone = line[5:].strip()
                    if phone and "/" not in phone:
                        write(os.path.join(a.qdir, phone + ".xml"), "")
                        live.discard(phone)
                        gone += 1
        if busy and a.status:
            write(a.status, "published=%d gone=%d live=%d\n" % (published, gone, len(live)))
        if not busy:
            time.sleep(a.poll)
    print("smart-dialogs: published=%d gone=%d live=%d" % (published, gone, len(live)), file=sys.stderr)


if __name__ == "__main__":
    main()
