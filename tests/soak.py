"""Soak: a bounded run of mixed archiving, queries and expiry against a real Prosody.

`make soak` (opt-in, not part of `make test`) runs it for SOAK_SECONDS (default 600).
Senders chat at a steady rate, readers page through their archives, and expiry runs
every few seconds on a short retention, so the archive reaches a steady size. Every
few seconds it samples Prosody's RSS (/proc/<pid>/status) and open descriptors
(/proc/<pid>/fd). It fails if either trends upward beyond a tolerance (the last third
of the run against the first third after a warm-up), if the log has error lines, or
if expiry never ran; it prints the figures either way.

Usage: python3 tests/soak.py [SECONDS]
"""

import asyncio
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
import conftest  # noqa: E402
from conftest import (  # noqa: E402
    LOOP, PLUGIN_PATH, Client, Prosody, StanzaError, chat_xml, mam_query, use_module,
)

PAIRS = 6
RATE = 25  # messages per second per sender
EXPIRES_AFTER = 30  # seconds: the archive levels off at about RATE * PAIRS * 2 * this
CLEANUP_INTERVAL = 5
SAMPLE_EVERY = 5.0
RSS_TOLERANCE = 0.20  # last third's median may exceed the first third's by 20% ...
RSS_SLACK_KB = 4096  # ... plus 4 MB (allocator noise on a small heap)
FD_SLACK = 2


def sample(pid):
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


async def sender(alice, bob, stop, counts):
    n = 0
    while not stop.is_set():
        alice.send(chat_xml(bob.bare, f"soak {n} " + "x" * random.randint(10, 300)))
        n += 1
        counts["sent"] += 1
        if n % 50 == 0:
            bob.messages.clear()  # keep the client's own memory flat
        await asyncio.sleep(1 / RATE)


async def reader(client, stop, counts):
    while not stop.is_set():
        try:
            rsm = random.choice([{"max": 20}, {"max": 50, "before": ""}, {"max": 5}])
            results, fin = await mam_query(client, rsm=rsm)
            if fin.last and random.random() < 0.5:
                await mam_query(client, rsm={"max": 20, "after": fin.last})
            counts["queries"] += 1
        except StanzaError as e:
            if e.condition != "item-not-found":  # a page end expired meanwhile
                counts["query_errors"] += 1
        client.messages.clear()
        await asyncio.sleep(random.uniform(0.2, 0.6))


async def soak(seconds):
    server = Prosody("soak", users=2 * PAIRS + 2)
    server.options.update({
        "archive_expires_after": EXPIRES_AFTER,
        "archive_cleanup_interval": CLEANUP_INTERVAL,
        "log": {"info": str(server.log_path)},  # debug logging would dominate the run
    })
    use_module(server, PLUGIN_PATH)
    server.start()
    pid = server.proc.pid
    clients = []
    try:
        users = server.take_users(2 * PAIRS)
        for u in users:
            clients.append(await Client(server, u, "soak").connect())
        stop = asyncio.Event()
        counts = {"sent": 0, "queries": 0, "query_errors": 0}
        tasks = [asyncio.ensure_future(sender(clients[2 * i], clients[2 * i + 1], stop, counts))
                 for i in range(PAIRS)]
        # Readers are senders: nobody else touches their recorded messages (receivers'
        # lists are cleared by their sender task).
        tasks += [asyncio.ensure_future(reader(clients[2 * i], stop, counts)) for i in range(4)]
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(SAMPLE_EVERY)
            assert server.proc.poll() is None, f"prosody exited:\n{server.log_tail()}"
            rss, fds = sample(pid)
            samples.append((time.monotonic() - started, rss, fds))
            print(f"  t={samples[-1][0]:6.0f}s rss={rss / 1024:6.1f} MB fds={fds:3d} "
                  f"sent={counts['sent']} queries={counts['queries']}", flush=True)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for c in clients:
            await c.disconnect()
        server.stop()
    log = server.log_text().splitlines()
    errors = [line for line in log if re.search(r"\serror\t", line)]
    expiries = [line for line in log if "expired messages" in line]
    db = server.dir / "data" / "mam_archive.sqlite"
    db_mb = db.stat().st_size / 1e6 if db.exists() else 0.0
    server.cleanup()

    # Warm-up: the first 20% of the run (the archive grows until expiry catches up).
    settled = [s for s in samples if s[0] >= 0.2 * seconds] or samples
    third = max(1, len(settled) // 3)
    rss_first = statistics.median(s[1] for s in settled[:third])
    rss_last = statistics.median(s[1] for s in settled[-third:])
    fd_first = max(s[2] for s in settled[:third])
    fd_last = max(s[2] for s in settled[-third:])
    print(f"soak {seconds}s: {counts['sent']} messages sent, {counts['queries']} queries "
          f"({counts['query_errors']} failed), {len(expiries)} expiry runs, database {db_mb:.1f} MB")
    print(f"  RSS median {rss_first / 1024:.1f} MB -> {rss_last / 1024:.1f} MB "
          f"(max {max(s[1] for s in samples) / 1024:.1f} MB); fds {fd_first} -> {fd_last}; "
          f"{len(errors)} error lines in the log")
    problems = []
    if rss_last > rss_first * (1 + RSS_TOLERANCE) + RSS_SLACK_KB:
        problems.append("RSS trends upward")
    if fd_last > fd_first + FD_SLACK:
        problems.append("open descriptors trend upward")
    if errors:
        problems.append("error lines in the log:\n" + "\n".join(errors[:10]))
    if counts["query_errors"]:
        problems.append("queries failed")
    if seconds > EXPIRES_AFTER + 2 * CLEANUP_INTERVAL and not expiries:
        problems.append("expiry never deleted anything")
    return problems


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("SOAK_SECONDS", "600"))
    problems = LOOP.run_until_complete(soak(seconds))
    pending = [t for t in asyncio.all_tasks(LOOP) if not t.done()]
    for task in pending:
        task.cancel()
    LOOP.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for p in problems:
        print(f"FAIL: {p}")
    conftest._stop_leftover_servers()
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
