"""Crash safety and storage faults (issue 5, items 1 and 2), against a real Prosody.

- kill -9 mid-load: the database passes integrity_check, every message a query had
  shown (so committed) is there with its id, and what else survived is a prefix of
  what was sent (intact, unique ids, in order): the loss is inside the documented
  window (at most the writer's queue, 20,000 writes).
- A graceful stop (SIGTERM) and a module reload (`prosodyctl shell`) lose nothing.
- The database locked by another process, or full (`mam_max_db_pages`): messages are
  delivered, Prosody answers pings while the fault lasts, MAM answers within a bound,
  the log names the cause once, and the writes catch up when the fault clears.
- A corrupt database file at start-up: the module stays loaded without an archive,
  logs the cause once naming the file, answers MAM with a temporary error (wait,
  internal-server-error), keeps Prosody serving logins, pings and messages, and
  recovers by itself once the file is moved away.
- Real file-system faults, on a tiny tmpfs (needs the right to mount, as root in CI;
  skipped otherwise): a really full disk (SQLITE_FULL), recovered by growing the tmpfs
  while Prosody runs; and a read-only mount at start-up (EROFS; this replaces a test
  of an unwritable file that only ran as non-root, root ignoring file permissions),
  recovered by itself once the mount is writable again.
  A mount cannot become read-only while the writer has the file open (EBUSY), so a
  database turning read-only under a running writer is not tested.

The crash, stop and reload tests run on both archive backends (MAM_TEST_BACKEND);
the others are about the SQLite file and its file system (`sqlite_only`). PostgreSQL's
own outages are in test_postgres.py.
"""

import asyncio
import base64
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid

import pytest

from conftest import (
    log_lines, wait_log,
    BACKEND, HOST, NS_CLIENT, PLUGIN_PATH, WAIT, Prosody, StanzaError, archive_count, chat_xml,
    mam_all, mam_query, prosody_config, prosodyctl, q, sqlite_archive_rows, stanza_ids, use_module,
)

pytestmark = pytest.mark.native_only  # stock keeps its archive elsewhere (internal files)

QUEUE_CAPACITY = 20_000  # src/writer.rs: the most writes accepted and not yet committed


def db_path(server):
    return server.dir / "data" / "mam_archive.sqlite"


def integrity(path):
    conn = sqlite3.connect(str(path), timeout=WAIT)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def assert_intact(server):
    """SQLite: the file passes integrity_check (PostgreSQL keeps its own integrity; the
    tests compare its rows with what MAM answers instead)."""
    if BACKEND == "sqlite":
        assert integrity(db_path(server)) == [("ok",)]


def kill_hard(server):
    """kill -9 by PID, as a crash would."""
    proc, server.proc = server.proc, None
    Prosody.running.discard(server)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT)


def body(m):
    return m.findtext(q(NS_CLIENT, "body"))


def delivered_ids(client, user_bare):
    """body -> the stanza-id (by the recipient's archive) of every delivered message."""
    out = {}
    for m in client.delivered():
        sids = stanza_ids(m, by=user_bare)
        if body(m) is not None and sids:
            out[body(m)] = sids[0].get("id")
    return out


async def wait_delivered(client, bodies, timeout=WAIT):
    want = set(bodies)
    deadline = time.monotonic() + timeout
    while not want <= {body(m) for m in client.delivered()}:
        assert time.monotonic() < deadline, f"{len(want - {body(m) for m in client.delivered()})} not delivered"
        await asyncio.sleep(0.02)


async def timed_ping(client):
    started = time.monotonic()
    await client.roundtrip()
    return time.monotonic() - started


async def bounded_query(client, bound=WAIT):
    """A MAM query during a fault: an error reply or results, never a hang past `bound`."""
    started = time.monotonic()
    try:
        results, _fin = await asyncio.wait_for(mam_query(client, rsm={"max": 5}), bound)
        outcome = f"{len(results)} results"
    except StanzaError as e:
        assert e.condition in ("internal-server-error", "resource-constraint"), e
        outcome = e.condition
    return outcome, time.monotonic() - started


# --------------------------------------------------------------------------- crash safety

async def test_kill_9_mid_load_keeps_every_committed_message_and_the_database_intact(prosody_factory, connect):
    server = prosody_factory("crash", users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    first = [f"c{i}" for i in range(200)]
    for text in first:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, first)
    committed = await mam_all(bob)  # a query sees only committed writes
    assert [r.body for r in committed] == first

    # Keep sending, and kill -9 while Prosody is busy archiving.
    more = [f"k{i}" for i in range(3000)]
    for i, text in enumerate(more):
        alice.send(chat_xml(bob.bare, text))
        if i % 200 == 199:
            await asyncio.sleep(0.01)
    await bob.wait_for_message(lambda m: body(m) == "k300")
    kill_hard(server)
    received = delivered_ids(bob, bob.bare)
    await alice.disconnect()
    await bob.disconnect()

    server.start()
    assert_intact(server)
    bob = await connect(server, b)
    after = await mam_all(bob, page=50)
    assert [(r.id, r.body) for r in after[:200]] == [(r.id, r.body) for r in committed]
    survived = [r.body for r in after[200:]]
    assert survived == more[:len(survived)], "survivors are not a prefix of what was sent, in order"
    assert len({r.id for r in after}) == len(after)
    for r in after:  # intact: the stored stanza is the one delivered, with its id
        assert r.message.get("to", "").startswith(bob.bare) and r.message.get("type") == "chat"
        if r.body in received:
            assert received[r.body] == r.id
    lost = len([t for t in more if t in received]) - len(survived)
    assert lost <= QUEUE_CAPACITY
    # The database holds exactly what MAM answers: bob's archive and alice's (sent copies).
    alice = await connect(server, a)
    assert archive_count(server) == len(after) + len(await mam_all(alice))
    print(f"kill -9: {len(received)} delivered, {len(after)} archived, {max(lost, 0)} lost in the window")


async def test_a_graceful_stop_loses_nothing_that_was_delivered(prosody_factory, connect):
    server = prosody_factory("sigterm", users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    texts = [f"t{i}" for i in range(500)]
    for text in texts:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, texts)
    received = delivered_ids(bob, bob.bare)
    server.stop()  # SIGTERM straight away: no query has waited for the writes
    await alice.disconnect()
    await bob.disconnect()

    server.start()
    assert_intact(server)
    bob = await connect(server, b)
    after = await mam_all(bob)
    assert [(r.body, r.id) for r in after] == [(t, received[t]) for t in texts]
    assert archive_count(server) == 2 * len(texts)  # bob's copies and alice's


async def test_a_module_reload_loses_nothing_and_archiving_carries_on(prosody_factory, connect):
    modules = prosody_config.MODULES + ["admin_shell"]
    server = prosody_factory("reload", {"modules_enabled": modules}, users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    texts = [f"r{i}" for i in range(500)]
    for text in texts:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, texts)
    received = delivered_ids(bob, bob.bare)
    reload = await asyncio.get_running_loop().run_in_executor(
        None, lambda: prosodyctl(server, "shell", "module", "reload", "mam", HOST, timeout=WAIT))
    assert reload.returncode == 0, reload.stdout + reload.stderr
    await wait_log(server, "Archive at")  # twice: the first load and the reload
    assert len(log_lines(server, "Archive at")) == 2, server.log_tail()

    alice.send(chat_xml(bob.bare, "after reload"))
    await bob.wait_for_message(lambda m: body(m) == "after reload")
    after = await mam_all(bob)
    assert [(r.body, r.id) for r in after[:-1]] == [(t, received[t]) for t in texts]
    assert after[-1].body == "after reload"


# --------------------------------------------------------------------------- storage faults

@pytest.mark.sqlite_only(reason="a SQLite file lock held by another process")
async def test_a_database_locked_by_another_process_delays_archiving_but_not_the_server(prosody_factory, connect):
    server = prosody_factory("locked", users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    alice.send(chat_xml(bob.bare, "before"))
    await wait_delivered(bob, ["before"])
    assert [r.body for r in await mam_all(bob)] == ["before"]

    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        conn = sqlite3.connect(str(db_path(server)), timeout=WAIT, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(WAIT)  # longer than SQLite's 5 s busy timeout in the writer
            conn.execute("COMMIT")
        finally:
            conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(WAIT)
        texts = [f"l{i}" for i in range(100)]
        for text in texts:
            alice.send(chat_xml(bob.bare, text))
        await wait_delivered(bob, texts)
        assert await timed_ping(alice) < 2.0  # answered while the lock is held
        outcome, took = await bounded_query(bob)
        await wait_log(server, "archive write failed")  # after the busy timeout
        assert await timed_ping(alice) < 2.0
        assert not release.is_set()
    finally:
        release.set()
        holder.join(WAIT)
    await wait_log(server, "archive storage recovered", timeout=2 * WAIT)
    failed = log_lines(server, "archive write failed")
    assert len(failed) == 1 and "locked" in failed[0], failed
    assert len(log_lines(server, "archive storage recovered")) == 1
    assert [r.body for r in await mam_all(bob)] == ["before"] + texts
    print(f"locked: query during the fault -> {outcome} in {took:.1f}s")


@pytest.mark.sqlite_only(reason="mam_max_db_pages is SQLite's max_page_count")
async def test_a_full_database_keeps_delivering_and_keeps_what_was_committed(prosody_factory, connect):
    # 24 pages of 8 KiB: the empty schema takes about 14, so a few dozen of the
    # incompressible messages below fill the rest (and 10 short ones do not).
    server = prosody_factory("full", {"mam_max_db_pages": 24}, users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    early = [f"e{i}" for i in range(10)]
    for text in early:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, early)
    committed = await mam_all(bob)
    assert [r.body for r in committed] == early

    # Random hex, which compression only halves: the free pages hold far fewer than
    # 200 such messages (twice).
    texts = [f"f{i}-{os.urandom(1000).hex()}" for i in range(200)]
    for text in texts:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, texts)
    await wait_log(server, "archive write failed")
    assert await timed_ping(alice) < 2.0
    outcome, took = await bounded_query(bob)
    more = [f"g{i}" for i in range(20)]  # still delivered while full
    for text in more:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, more)
    failed = log_lines(server, "archive write failed")
    assert len(failed) == 1 and "full" in failed[0], failed
    await alice.disconnect()
    await bob.disconnect()

    server.stop()  # promptly, although writes are still failing
    assert server.proc is None
    not_stored = log_lines(server, "archive writes not stored")
    assert len(not_stored) == 1, not_stored
    dropped = int(not_stored[0].split("(")[1].split(" of them messages")[0])

    server.options["mam_max_db_pages"] = 100_000
    use_module(server, PLUGIN_PATH)  # same data dir, the higher limit
    server.start()
    assert integrity(db_path(server)) == [("ok",)]
    bob, alice = await connect(server, b), await connect(server, a)
    after = await mam_all(bob)
    assert [(r.id, r.body) for r in after[:10]] == [(r.id, r.body) for r in committed]
    sent = texts + more
    stored = 0
    for archive in (after, await mam_all(alice)):  # each message is in both archives
        assert [r.body for r in archive[:10]] == early
        later = [r.body for r in archive[10:]]
        assert later == sent[:len(later)], "what survived is not a prefix of what was sent"
        stored += len(later)
    assert stored + dropped == 2 * len(sent), (stored, dropped)
    print(f"full: query during the fault -> {outcome} in {took:.1f}s; "
          f"{stored} of {2 * len(sent)} writes stored, {dropped} logged as not stored")


@pytest.mark.sqlite_only(reason="a corrupt SQLite file")
async def test_a_corrupt_database_file_stops_only_archiving_until_it_is_replaced(connect):
    server = Prosody("faults-corrupt", users=2)
    try:
        path = db_path(server)
        garbage = bytes((i * 7919) % 251 for i in range(64 * 1024))
        path.write_bytes(garbage)
        server.start()
        await wait_log(server, "cannot open the archive database")
        lines = log_lines(server, "cannot open the archive database")
        assert str(path) in lines[0], lines
        a, b = server.take_users(2)
        alice, bob = await connect(server, a), await connect(server, b)
        await alice.roundtrip()
        alice.send(chat_xml(bob.bare, "still served"))
        await wait_delivered(bob, ["still served"])
        with pytest.raises(StanzaError) as info:  # MAM says "try again later"
            await mam_query(bob, rsm={"max": 5})
        assert (info.value.type, info.value.condition) == ("wait", "internal-server-error")
        assert server.proc.poll() is None
        assert path.read_bytes() == garbage, "the module wrote to a file it could not read"
        # The retries do not flood the log: the cause is named once.
        await asyncio.sleep(6)
        assert len(log_lines(server, "cannot open the archive database")) == 1
        # The admin moves the broken file away: the module recovers by itself.
        path.rename(path.with_suffix(".corrupt"))
        await wait_log(server, "Archive database opened", timeout=20)
        alice.send(chat_xml(bob.bare, "archived again"))
        await wait_delivered(bob, ["archived again"])
        assert [r.body for r in await mam_all(bob)] == ["archived again"]
    finally:
        server.cleanup()


# --------------------------------------------------------------------------- real file-system faults

class Tmpfs:
    """A tiny tmpfs for the archive database: a real full disk or read-only mount."""

    def __init__(self, path):
        self.path = path
        self.servers = []

    def mount(self, *options):
        subprocess.run(["mount", "-o", ",".join(("remount",) + options), str(self.path)],
                       check=True, capture_output=True, timeout=WAIT)

    def server(self, name, options=None, users=2):
        """A Prosody (not started) whose archive is on this tmpfs."""
        server = Prosody(name, {"mam_database": str(self.path / "mam.sqlite"), **(options or {})}, users)
        self.servers.append(server)
        return server


def mounted(path):
    out = subprocess.run(["mount"], capture_output=True, text=True, timeout=WAIT).stdout
    return [line for line in out.splitlines() if f" on {path} " in line]


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs at a unique dir under pytest's tmp dir; skips if mount is not
    permitted. Teardown stops the servers using it, then unmounts (lazily as a last
    resort) and checks that nothing is left mounted."""
    path = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "none", str(path)],
                              capture_output=True, text=True, timeout=WAIT)
    except FileNotFoundError:
        pytest.skip("no `mount` command: cannot make a real full or read-only file system")
    if done.returncode != 0:
        pytest.skip(f"`mount -t tmpfs` not permitted here ({done.stderr.strip()}): "
                    "cannot make a real full or read-only file system")
    fs = Tmpfs(path)
    try:
        yield fs
    finally:
        for server in fs.servers:
            server.cleanup()
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=WAIT).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=WAIT)
        assert not mounted(path), f"{path} is still mounted"


def archived_ids(path):
    """(user, id) of every row in the archive database, read directly."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=WAIT)
    try:
        return {(row[0], row[1]) for row in sqlite_archive_rows(conn)}
    finally:
        conn.close()


@pytest.mark.sqlite_only(reason="the SQLite file on a full tmpfs")
async def test_a_really_full_disk_delays_archiving_but_not_the_server(tmpfs, connect):
    """The database on a 2 MiB tmpfs, filled by archiving (a real SQLITE_FULL); then the
    tmpfs grown while Prosody runs: the writer recovers by itself and loses nothing."""
    server = tmpfs.server("faults-disk-full")
    server.start()
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    early = [f"e{i}" for i in range(10)]
    for text in early:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, early)
    committed = {"bob": await mam_all(bob), "alice": await mam_all(alice)}
    assert [r.body for r in committed["bob"]] == early

    # The messages themselves fill it: random base64, which compression leaves at
    # about 4.5 KB: 2 archives x 200 x 4.5 KB, in the WAL and again in the database
    # file, is far more than the 2 MiB of the tmpfs.
    texts = [f"f{i}-{base64.b64encode(os.urandom(4500)).decode()}" for i in range(200)]
    for i, text in enumerate(texts):
        alice.send(chat_xml(bob.bare, text))
        if i % 20 == 19:
            await asyncio.sleep(0.01)
    await wait_delivered(bob, texts)
    await wait_log(server, "archive write failed")
    pings = [await timed_ping(alice)]
    outcome, took = await bounded_query(bob, bound=4.0)
    more = [f"g{i}" for i in range(20)]  # still delivered during the fault
    for text in more:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, more)
    pings.append(await timed_ping(bob))
    assert max(pings) < 2.0, pings
    assert not log_lines(server, "archive storage recovered")  # really still failing

    tmpfs.mount("size=64m")  # free space while Prosody runs
    await wait_log(server, "archive storage recovered", timeout=2 * WAIT)
    after = [f"a{i}" for i in range(10)]
    for text in after:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, after)
    failed = log_lines(server, "archive write failed")
    assert len(failed) == 1 and "full" in failed[0], failed
    assert len(log_lines(server, "archive storage recovered")) == 1
    assert not log_lines(server, "not archived"), log_lines(server, "not archived")[:3]
    sent = early + texts + more + after
    for who, client in (("bob", bob), ("alice", alice)):  # each message in both archives
        archive = await mam_all(client)
        assert [r.body for r in archive] == sent, f"{who}: {len(archive)} of {len(sent)}"
        assert [(r.id, r.body) for r in archive[:10]] == [(r.id, r.body) for r in committed[who]]
    await alice.disconnect()
    await bob.disconnect()

    server.stop()
    path = tmpfs.path / "mam.sqlite"
    assert integrity(path) == [("ok",)]
    rows = archived_ids(path)
    for who, results in committed.items():
        user = (alice if who == "alice" else bob).user
        assert {(user, r.id) for r in results} <= rows
    assert len(rows) == 2 * len(sent)
    print(f"disk full: query during the fault -> {outcome} in {took:.1f}s")


@pytest.mark.sqlite_only(reason="the SQLite file on a read-only tmpfs")
async def test_a_read_only_file_system_stops_only_archiving_until_it_is_writable_again(tmpfs, connect):
    """The database on a file system mounted read-only (a real EROFS, which root cannot
    override, unlike file permissions). Linux refuses to remount a file system read-only
    while a process has a file on it open for writing (EBUSY), and an immutable flag
    does not affect descriptors already open, so a running writer cannot be made to
    see this fault; what can happen is Prosody starting on a read-only mount."""
    modules = prosody_config.MODULES + ["admin_shell"]
    server = tmpfs.server("faults-read-only", {"modules_enabled": modules})
    server.start()  # creates the database
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    early = [f"e{i}" for i in range(10)]
    for text in early:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, early)
    committed = await mam_all(bob)
    assert [r.body for r in committed] == early, server.log_tail()
    await alice.disconnect()
    await bob.disconnect()
    server.stop()
    path = tmpfs.path / "mam.sqlite"
    before = path.read_bytes()

    tmpfs.mount("ro")
    server.start()
    await wait_log(server, "cannot open the archive database")
    alice, bob = await connect(server, a, "ro"), await connect(server, b, "ro")
    texts = [f"r{i}" for i in range(50)]
    for text in texts:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, texts)
    assert await timed_ping(alice) < 2.0
    started = time.monotonic()
    try:  # the module answers "try again later" while the database is unavailable
        await asyncio.wait_for(mam_query(bob, rsm={"max": 5}), 4.0)
        outcome = "results"
    except StanzaError as e:
        outcome = e.condition
    assert outcome == "internal-server-error"
    took = time.monotonic() - started
    lines = log_lines(server, "cannot open the archive database")  # the module's line,
    assert len([line for line in lines if f"{HOST}:mam" in line]) == 1, lines  # once
    assert all(str(path) in line for line in lines), lines
    assert server.proc.poll() is None

    tmpfs.mount("rw")  # writable again: the module recovers by itself
    await wait_log(server, "Archive database opened", timeout=20)
    after = [f"a{i}" for i in range(10)]
    for text in after:
        alice.send(chat_xml(bob.bare, text))
    await wait_delivered(bob, after)
    archive = await mam_all(bob)
    assert [r.body for r in archive] == early + after  # what came during the fault is not
    assert [(r.id, r.body) for r in archive[:10]] == [(r.id, r.body) for r in committed]
    await alice.disconnect()
    await bob.disconnect()
    server.stop()
    assert integrity(path) == [("ok",)]
    assert {(b, r.id) for r in committed} <= archived_ids(path)
    assert before != path.read_bytes()  # written again once loaded
    print(f"read-only: query during the fault -> {outcome} in {took:.1f}s")
