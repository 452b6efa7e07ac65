#!/usr/bin/env python3
"""The clients and the upstream of adversarial.sh (stdlib only): connection floods
against a running gateway, and a config reload while a stream is open. Each
subcommand prints one line per finding ("h2c preface only: 2000/2000 closed, the last
after 31.0 s") and exits 1 when what should hold did not.

  adversarial.py floods   --public PORT --connections N
  adversarial.py admin    --admin PORT --connections N --pid PID
  adversarial.py upstream --port PORT                   (an endless paced SSE upstream)
  adversarial.py reload   --public PORT --admin PORT --config FILE --new FILE --log FILE
                          --label TEXT --expect success|failure
"""

import argparse
import asyncio
import os
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
# A HEADERS frame that announces 100 bytes and brings 10.
HALF_HEADERS = PREFACE + SETTINGS + bytes([0, 0, 100, 1, 4, 0, 0, 0, 1]) + b"\x82" * 10


async def hold(port, first, trickle, started, closed_at, key):
    """Opens a connection, writes `first`, then (slowloris) one more header byte every
    `trickle` seconds; records when the gateway closes it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        closed_at[key] = None
        return
    writer.write(first)
    try:
        while True:
            if trickle:
                try:
                    data = await asyncio.wait_for(reader.read(4096), trickle)
                except asyncio.TimeoutError:
                    writer.write(b"x")
                    await writer.drain()
                    continue
            else:
                data = await reader.read(4096)
            if not data:
                break
    except (OSError, ConnectionError):
        pass
    closed_at[key] = time.monotonic() - started
    writer.close()


async def probe(port, path, host="gateway"):
    """One HTTP/1.1 GET; (status, seconds)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    await reader.read()
    writer.close()
    return int(head.split(b" ")[1]), time.monotonic() - started


async def floods(args):
    n = args.connections
    kinds = {
        "h1 slowloris (a header byte every 10 s)": (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: ", 10),
        "h2c preface only": (PREFACE, 0),
        "h2c half a HEADERS frame": (HALF_HEADERS, 0),
    }
    counts = {"h1 slowloris (a header byte every 10 s)": n, "h2c preface only": n // 2}
    counts["h2c half a HEADERS frame"] = n - n // 2
    started = time.monotonic()
    closed_at = {}
    tasks = []
    for kind, (first, trickle) in kinds.items():
        for i in range(counts[kind]):
            tasks.append(asyncio.create_task(hold(args.public, first, trickle, started, closed_at, (kind, i))))
            if i % 200 == 199:
                await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    status, took = await probe(args.public, "/nowhere")
    print(f"public port while {len(tasks)} connections were open: {status} in {took * 1000:.0f} ms")
    done, pending = await asyncio.wait(tasks, timeout=args.wait)
    ok = True
    for kind in kinds:
        times = [t for (k, _), t in closed_at.items() if k == kind and t is not None]
        refused = sum(1 for (k, _), t in closed_at.items() if k == kind and t is None)
        last = f", the last after {max(times):.1f} s" if times else ""
        print(f"{kind}: {len(times)}/{counts[kind]} closed{last}" + (f" ({refused} refused)" if refused else ""))
        ok &= len(times) + refused == counts[kind]
    for task in pending:
        task.cancel()
    return ok


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def admin(args):
    started = time.monotonic()
    closed_at = {}
    tasks = []
    for i in range(args.connections):
        tasks.append(asyncio.create_task(hold(args.admin, b"", 0, started, closed_at, i)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    cpu_before, wall_before = cpu_seconds(args.pid), time.monotonic()
    answers = []
    for _ in range(20):
        try:
            answers.append(await asyncio.wait_for(probe(args.admin, "/healthz"), 10))
        except (OSError, asyncio.TimeoutError):
            answers.append((0, 10.0))
        await asyncio.sleep(0.25)
    cpu = (cpu_seconds(args.pid) - cpu_before) / (time.monotonic() - wall_before) * 100
    good = [t for status, t in answers if status == 200]
    still_open = args.connections - len(closed_at)
    slowest = f", slowest {max(good) * 1000:.0f} ms" if good else ""
    print(
        f"admin: /healthz answered {len(good)}/20{slowest} while {args.connections} idle admin "
        f"connections were opened ({still_open} still open, the rest closed to make room); "
        f"gateway CPU {cpu:.0f} %"
    )
    for task in tasks:
        task.cancel()
    return len(good) == 20 and cpu < 50


async def upstream(args):
    async def answer(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            i = 0
            while True:
                event = f"data: {time.monotonic():.6f} {i}\n\n".encode()
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                i += 1
                await asyncio.sleep(0.1)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


def reload_results(log):
    """How many reloads the gateway's log reports, by result (the log, not /metrics:
    a scrape of thousands of routes' series is itself a load)."""
    with open(log, errors="replace") as f:
        text = f.read()
    return {"success": text.count("config reloaded"), "failure": text.count("config reload failed")}


async def reload(args):
    reader, writer = await asyncio.open_connection("127.0.0.1", args.public)
    writer.write(b"GET /api/stream HTTP/1.1\r\nhost: gateway\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    gaps = []
    last = [time.monotonic()]

    async def read_events():
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                now = time.monotonic()
                gaps.append(now - last[0])
                last[0] = now

    events = asyncio.create_task(read_events())
    await asyncio.sleep(1)
    before = reload_results(args.log)
    gaps.clear()
    health = []
    started = time.monotonic()
    aside = args.config + ".new"
    with open(args.new, "rb") as src, open(aside, "wb") as dst:
        dst.write(src.read())
    os.rename(aside, args.config)
    result, took = None, None
    while time.monotonic() - started < 120:
        status, t = await asyncio.wait_for(probe(args.admin, "/healthz"), 60)
        health.append(t)
        counts = reload_results(args.log)
        for key in ("success", "failure"):
            if counts.get(key, 0) > before.get(key, 0):
                result, took = key, time.monotonic() - started
        if result:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    events.cancel()
    writer.close()
    gap = max(gaps) if gaps else float("inf")
    print(
        f"reload of {args.label}: {result or 'not seen'} after {took or 0:.2f} s; while it ran "
        f"the stream's events kept coming (largest gap {gap * 1000:.0f} ms, sent every 100 ms) "
        f"and /healthz answered {len(health)} times, slowest {max(health) * 1000:.0f} ms"
    )
    return result == args.expect and gap < 1.0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("floods")
    p.add_argument("--public", type=int, required=True)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--wait", type=float, default=45)
    p = sub.add_parser("admin")
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--connections", type=int, default=1100)
    p.add_argument("--pid", type=int, required=True)
    p = sub.add_parser("upstream")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("reload")
    p.add_argument("--public", type=int, required=True)
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--log", required=True, help="the gateway's log file")
    p.add_argument("--expect", choices=["success", "failure"], required=True)
    args = parser.parse_args()
    ok = asyncio.run({"floods": floods, "admin": admin, "upstream": upstream, "reload": reload}[args.command](args))
    sys.exit(0 if ok in (True, None) else 1)


if __name__ == "__main__":
    main()
