#!/usr/bin/env python3
"""Clients for scripts/ha-test.sh: new connections from many source
addresses to a service address, reading the backend's "NAME via PEER"
greeting (scripts/ha/backend.py), and long transfers checked byte by byte.

  client.py map    --dst IP:PORT --sources A,B,… [--tries N]  → JSON {src: "NAME via PEER" | "ERR …"}
  client.py loop   --dst IP:PORT --sources A,B,… --events FILE --stop FILE --max-seconds S
  client.py bulk   --dst IP:PORT --source A --bytes N --delay-ms D --result FILE
  client.py report --events FILE [--since T] [--baseline MAP.json]

Every wait is bounded: connects and reads time out (CONNECT_TIMEOUT), loops
end at a stop file or after max-seconds.
"""
import argparse
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

# A new connection that takes longer than this failed (the kernel's first
# SYN retransmission is at 1 s: one retransmission is allowed).
CONNECT_TIMEOUT = 2.5


def split_dst(dst):
    host, port = dst.rsplit(":", 1)
    return host.strip("[]"), int(port)


def connect(src, dst):
    host, port = split_dst(dst)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT)
    s.bind((src, 0))
    s.connect((host, port))
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError(f"EOF after {buf!r}")
        buf += chunk
        if len(buf) > 200:
            raise ConnectionError("greeting too long")
    return buf.decode().strip()


def once(src, dst):
    """One new connection: (ok, greeting or error, seconds)."""
    t0 = time.monotonic()
    try:
        s = connect(src, dst)
        try:
            greeting = read_line(s)
        finally:
            s.close()
        return True, greeting, time.monotonic() - t0
    except (OSError, ConnectionError) as e:
        return False, f"ERR {type(e).__name__}: {e}", time.monotonic() - t0


def cmd_map(a):
    sources = a.sources.split(",")
    out = {}

    def probe(src):
        last = None
        for _ in range(a.tries):
            ok, what, _ = once(src, a.dst)
            if ok:
                return src, what
            last = what
        return src, last

    with ThreadPoolExecutor(max_workers=8) as pool:
        for src, what in pool.map(probe, sources):
            out[src] = what
    json.dump(out, sys.stdout, sort_keys=True)
    print()


def cmd_loop(a):
    import os

    sources = a.sources.split(",")
    end = time.time() + a.max_seconds
    with open(a.events, "w") as f:
        i = 0
        while time.time() < end and not os.path.exists(a.stop) and (a.attempts == 0 or i < a.attempts):
            src = sources[i % len(sources)]
            i += 1
            t = time.time()
            ok, what, took = once(src, a.dst)
            f.write(json.dumps({"t": t, "src": src, "ok": ok, "what": what, "took": took}) + "\n")
            f.flush()
            time.sleep(a.pause)


def cmd_bulk(a):
    t0 = time.monotonic()
    result = {"ok": False, "bytes": 0, "expected": a.bytes, "greeting": None, "error": None}
    cycle = bytes(range(251)) * 300
    try:
        s = connect(a.source, a.dst)
        s.settimeout(10)
        result["greeting"] = read_line(s)
        s.sendall(f"BULK {a.bytes} {a.delay_ms}\n".encode())
        header = read_line(s)
        if header != f"LEN {a.bytes}":
            raise ConnectionError(f"unexpected header {header!r}")
        if a.started:
            open(a.started, "w").close()
        got = 0
        while True:
            data = s.recv(65536)
            if not data:
                break
            start = got % 251
            if data != cycle[start:start + len(data)]:
                raise ConnectionError(f"corrupt bytes at offset {got}")
            got += len(data)
            result["bytes"] = got
        s.close()
        result["ok"] = got == a.bytes
        if not result["ok"]:
            result["error"] = f"short: {got} of {a.bytes} bytes"
    except (OSError, ConnectionError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    result["seconds"] = round(time.monotonic() - t0, 3)
    with open(a.result, "w") as f:
        json.dump(result, f)


def backend_of(what):
    return what.split(" via ")[0]


def cmd_report(a):
    events = [json.loads(l) for l in open(a.events) if l.strip()]
    baseline = json.load(open(a.baseline)) if a.baseline else None
    since = a.since or 0.0
    until = a.until or float("inf")
    after = [e for e in events if since <= e["t"] < until]
    fails = [e for e in after if not e["ok"]]
    first_ok = next((e for e in after if e["ok"]), None)
    out = {
        "attempts": len(after),
        "failed": len(fails),
        "failures": [f'{e["t"] - since:+.3f}s {e["src"]} {e["what"]}' for e in fails[:5]],
        "first_success_after": round(first_ok["t"] + first_ok["took"] - since, 3) if first_ok else None,
        "max_connect_seconds": round(max((e["took"] for e in after if e["ok"]), default=0), 3),
        "via": {},
    }
    per_source = {}
    for e in after:
        if e["ok"]:
            via = e["what"].split(" via ")[-1]
            out["via"][via] = out["via"].get(via, 0) + 1
            per_source.setdefault(e["src"], {}).setdefault(backend_of(e["what"]), set()).add(via)
    # Sources whose connections reached more than one backend, and sources
    # whose connections were carried by more than one ringlb host.
    split = {s: {b: sorted(v) for b, v in m.items()} for s, m in per_source.items() if len(m) > 1}
    out["sources"] = len(per_source)
    out["sources_with_several_backends"] = len(split)
    out["several_backends_examples"] = dict(list(split.items())[:2])
    out["sources_over_several_hosts"] = sum(
        1 for m in per_source.values() if len(set().union(*m.values())) > 1
    )
    if baseline is not None and a.moved_from:
        # Clients of a backend that went down: each to one replacement; the
        # others keep theirs.
        moved = {s for s, v in baseline.items() if backend_of(v) == a.moved_from}
        kept = [e for e in after if e["ok"] and e["src"] not in moved]
        same = sum(1 for e in kept if backend_of(e["what"]) == backend_of(baseline[e["src"]]))
        out["moved_sources"] = len(moved)
        out["moved_to"] = {
            s: sorted(per_source.get(s, {}).keys()) for s in sorted(moved)
        }
        out["others_same_backend_pct"] = round(100.0 * same / len(kept), 1) if kept else None
    elif baseline is not None:
        # After the first success: does every client reach its old backend?
        settled = [e for e in after if e["ok"] and first_ok and e["t"] >= first_ok["t"]]
        same = sum(1 for e in settled if backend_of(e["what"]) == backend_of(baseline.get(e["src"], "")))
        out["same_backend"] = f"{same}/{len(settled)}"
        out["same_backend_pct"] = round(100.0 * same / len(settled), 1) if settled else None
    json.dump(out, sys.stdout)
    print()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("map")
    m.add_argument("--dst", required=True)
    m.add_argument("--sources", required=True)
    m.add_argument("--tries", type=int, default=1)
    l = sub.add_parser("loop")
    l.add_argument("--dst", required=True)
    l.add_argument("--sources", required=True)
    l.add_argument("--events", required=True)
    l.add_argument("--stop", required=True)
    l.add_argument("--max-seconds", type=float, default=60)
    l.add_argument("--pause", type=float, default=0.01)
    l.add_argument("--attempts", type=int, default=0, help="stop after this many (0: no limit)")
    b = sub.add_parser("bulk")
    b.add_argument("--dst", required=True)
    b.add_argument("--source", required=True)
    b.add_argument("--bytes", type=int, required=True)
    b.add_argument("--delay-ms", type=int, default=10)
    b.add_argument("--result", required=True)
    b.add_argument("--started", help="created once the transfer has begun")
    r = sub.add_parser("report")
    r.add_argument("--events", required=True)
    r.add_argument("--since", type=float)
    r.add_argument("--until", type=float)
    r.add_argument("--baseline")
    r.add_argument("--moved-from", help="the backend that went down (its clients may move)")
    a = ap.parse_args()
    {"map": cmd_map, "loop": cmd_loop, "bulk": cmd_bulk, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
