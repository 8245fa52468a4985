"""What a client was given is in the archive (issue 16): commit before delivery.

- kill -9 under load, repeated with different kill moments (MAM_TEST_KILL_ROUNDS,
  default 10, on each backend and Prosody version the suite runs on): every message a
  recipient received with its `<stanza-id>` is, after the restart, in the
  recipient's archive under that id and in the sender's archive, and each session's
  messages are archived in the order it sent them.
- Storage that cannot commit (SQLite locked by another process, SQLite only): by
  default deliveries are held for `mam_commit_wait_limit`, then go out before their
  commit with one log line for the outage and one when the archive catches up,
  counted in `messages_delivered_uncommitted`; nothing is delivered twice and
  everything ends up archived in order.
- `mam_commit_before_delivery = false`: delivery does not wait for the commit (the
  same lock does not hold a message back).
- A graceful stop while deliveries are held commits them, then delivers each once
  (here to offline storage, the recipient being offline).
- A stream resumed (XEP-0198) while its deliveries are held gets them on its new
  connection, once each.
- Another module's output filter failing on one held stanza costs that stanza only:
  the rest of what the commit released goes out, in order, and the error is logged.
"""

import asyncio
import datetime
import os
import random
import sqlite3
import threading
import time

import pytest

from conftest import (
    log_lines, wait_log,
    BACKEND, NS_CLIENT, WAIT, Client, chat_xml, mam_all, q, stanza_ids,
)
from test_faults import db_path, kill_hard

import prosody_config  # noqa: E402  (conftest puts prosody-test-env on sys.path)

PROBE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")

pytestmark = pytest.mark.native_only  # the stock module stores before routing anyway

KILL_ROUNDS = int(os.environ.get("MAM_TEST_KILL_ROUNDS", "10"))
PAIRS = 4
# Per sender and round: the most messages sent (bounds the load loop in count).
MAX_PER_SENDER = 4000


def body(m):
    return m.findtext(q(NS_CLIENT, "body"))


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def pump(client, to, prefix, stop_at):
    """Sends numbered messages in bursts until `stop_at` (monotonic) or the bound."""
    n = 0
    while time.monotonic() < stop_at and n < MAX_PER_SENDER:
        for _ in range(8):
            client.send(chat_xml(to, f"{prefix}-{n}"))
            n += 1
        await asyncio.sleep(0.004)
    return n


async def test_kill_9_under_load_never_leaves_a_delivered_message_out_of_the_archive(prosody_factory, connect):
    server = prosody_factory("delivered", users=2 * PAIRS)
    users = server.take_users(2 * PAIRS)
    senders, receivers = users[:PAIRS], users[PAIRS:]
    seed = int(os.environ.get("MAM_TEST_KILL_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    summary = []
    for round_ in range(KILL_ROUNDS):
        if server.proc is None:
            server.start()
        s_clients = [await connect(server, u) for u in senders]
        r_clients = [await connect(server, u) for u in receivers]
        round_start = time.time() - 2
        kill_after = rng.uniform(0.05, 1.0)
        stop_at = time.monotonic() + kill_after
        sent = await asyncio.gather(*[
            pump(s, r.bare, f"k{round_}-{i}", stop_at)
            for i, (s, r) in enumerate(zip(s_clients, r_clients))
        ])
        kill_hard(server)
        # What each recipient was given: body -> the stanza-id its archive assigned.
        given = []
        for r in r_clients:
            got = {}
            for m in r.delivered():
                sids = stanza_ids(m, by=r.bare)
                if body(m) is not None and sids:
                    got[body(m)] = sids[0].get("id")
            given.append(got)
        for c in s_clients + r_clients:
            c.xmpp.abort()

        server.start()
        missing, archived = [], 0
        for i in range(PAIRS):
            receiver = await connect(server, receivers[i], resource=f"check{round_}")
            sender = await connect(server, senders[i], resource=f"check{round_}")
            prefix = f"k{round_}-{i}-"
            in_receiver = {r.body: r.id for r in await mam_all(
                receiver, page=200, with_=sender.bare, start=iso(round_start)) if r.body.startswith(prefix)}
            sender_bodies = [r.body for r in await mam_all(
                sender, page=200, with_=receiver.bare, start=iso(round_start)) if r.body.startswith(prefix)]
            archived += len(in_receiver)
            for text, sid in given[i].items():
                if in_receiver.get(text) != sid:
                    missing.append((receivers[i], text, sid, in_receiver.get(text)))
                if text not in sender_bodies:
                    missing.append((senders[i], text, "sender's copy", None))
            # One session's messages, archived in the order it sent them.
            numbers = [int(t.rsplit("-", 1)[1]) for t in sender_bodies]
            assert numbers == sorted(numbers), f"round {round_}: {senders[i]}'s archive is out of order"
            numbers = [int(t.rsplit("-", 1)[1]) for t in in_receiver]
            assert numbers == sorted(numbers), f"round {round_}: {receivers[i]}'s archive is out of order"
            await receiver.disconnect()
            await sender.disconnect()
        delivered = sum(len(g) for g in given)
        summary.append(f"{kill_after:.2f}s:{sum(sent)} sent/{delivered} delivered/{archived} archived")
        assert not missing, (
            f"seed {seed}, round {round_} (kill after {kill_after:.2f}s): "
            f"{len(missing)} delivered but not archived, e.g. {missing[:5]}")
    print(f"kill -9 x{KILL_ROUNDS} (seed {seed}): " + ", ".join(summary))


async def test_a_held_stanza_goes_out_as_it_was_when_held(prosody_factory, connect):
    """MUC sends one stanza object to each occupant, readdressing it in between: one
    held behind an uncommitted message must still reach each occupant addressed to it."""
    muc = "conference.localhost"
    server = prosody_factory("heldmuc", {"components": {muc: "muc"}, "muc_room_locking": False}, users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    room = f"room@{muc}"
    for client, nick in ((alice, "alice"), (bob, "bob")):
        client.send(f"<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        await client.roundtrip()
    for i in range(20):
        # In one write: the chat message is archived and held for bob, and the
        # groupchat message that follows is routed to bob while it waits.
        alice.send(chat_xml(bob.bare, f"c{i}")
                   + f"<message to='{room}' type='groupchat'><body>g{i}</body></message>")
    want = {f"g{i}" for i in range(20)}
    deadline = time.monotonic() + WAIT
    while not want <= {body(m) for m in bob.delivered()}:
        assert time.monotonic() < deadline, "groupchat messages not delivered"
        await asyncio.sleep(0.02)
    for m in bob.delivered():
        if (body(m) or "").startswith("g"):
            assert m.get("to") == bob.full, f"groupchat to {m.get('to')}, not {bob.full}"
    # And the chat messages came in the order sent, each before the next groupchat one.
    order = [body(m) for m in bob.delivered() if body(m)]
    assert [t for t in order if t.startswith("c")] == [f"c{i}" for i in range(20)]


# --------------------------------------------------------------------------- storage that cannot commit

class SqliteLock:
    """An exclusive lock on the archive file held by another process's connection."""

    def __init__(self, server):
        self.path = db_path(server)
        self.locked, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self):
        conn = sqlite3.connect(str(self.path), timeout=WAIT, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self.locked.set()
            self.release.wait(3 * WAIT)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def __enter__(self):
        self.thread.start()
        assert self.locked.wait(WAIT)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(WAIT)


def delivered_bodies(client, prefix):
    return [body(m) for m in client.delivered() if (body(m) or "").startswith(prefix)]


async def send_held(sender, recipient, prefix, texts, wait):
    """Sends `texts` while the archive is locked: `wait` seconds later none of them
    has reached the recipient (held for its commit)."""
    for text in texts:
        sender.send(chat_xml(recipient.bare, text))
    await asyncio.sleep(wait)
    assert delivered_bodies(recipient, prefix) == []


async def wait_delivered(client, bodies, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not set(bodies) <= set(delivered_bodies(client, "")):
        assert time.monotonic() < deadline, f"not delivered: {set(bodies) - set(delivered_bodies(client, ''))}"
        await asyncio.sleep(0.02)


@pytest.mark.sqlite_only(reason="a SQLite file lock held by another process")
async def test_deliveries_wait_for_the_commit_then_go_out_after_the_wait_limit(prosody_factory, connect):
    server = prosody_factory("held", {"mam_commit_wait_limit": 3}, users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    alice.send(chat_xml(bob.bare, "before"))
    await wait_delivered(bob, ["before"])

    texts = [f"h{i}" for i in range(20)]
    with SqliteLock(server):
        # Held: nothing of this is committed, so nothing is delivered (a second is
        # far more than a delivery takes when storage works: see "before").
        await send_held(alice, bob, "h", texts, 1.0)
        # Then the wait limit passes and they go out, in order, once each.
        await wait_delivered(bob, texts)
        await wait_log(server, "Archive commits are taking longer than 3 s")
    await wait_log(server, "Archive commits caught up", timeout=2 * WAIT)
    assert delivered_bodies(bob, "h") == texts
    assert len(log_lines(server, "Archive commits are taking longer than")) == 1
    caught_up = log_lines(server, "Archive commits caught up")
    # One delivery each (alice has no other session: no carbons go out first).
    assert len(caught_up) == 1 and "20 deliveries went out" in caught_up[0], caught_up
    assert [r.body for r in await mam_all(bob)] == ["before"] + texts
    # Storage works again: deliveries wait for their commit again (and get it at once).
    alice.send(chat_xml(bob.bare, "after"))
    await wait_delivered(bob, ["after"])
    assert [r.body for r in await mam_all(bob)][-1] == "after"


@pytest.mark.sqlite_only(reason="a SQLite file lock held by another process")
async def test_with_the_opt_out_delivery_does_not_wait_for_the_commit(prosody_factory, connect):
    server = prosody_factory("optout", {"mam_commit_before_delivery": False, "mam_commit_wait_limit": 30}, users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    texts = [f"o{i}" for i in range(20)]
    with SqliteLock(server):
        for text in texts:
            alice.send(chat_xml(bob.bare, text))
        await wait_delivered(bob, texts, timeout=2.0)  # well inside the 5 s busy timeout
        delivered = [m for m in bob.delivered() if (body(m) or "").startswith("o")]
        assert all(stanza_ids(m, by=bob.bare) for m in delivered)
    # The writer was still inside SQLite's busy timeout: they commit now.
    assert [r.body for r in await mam_all(bob)] == texts
    assert log_lines(server, "Archive commits are taking longer than") == []


@pytest.mark.sqlite_only(reason="a SQLite file lock held by another process")
async def test_a_stop_while_deliveries_are_held_commits_them_and_delivers_each_once(prosody_factory, connect):
    server = prosody_factory("heldstop", {"mam_commit_wait_limit": 30}, users=2)
    a, b = server.take_users(2)
    alice = await connect(server, a)
    texts = [f"s{i}" for i in range(5)]
    lock = SqliteLock(server)
    with lock:
        alice.send("".join(chat_xml(f"{b}@{server.host}", text) for text in texts))
        await asyncio.sleep(0.5)  # the first is held in alice's runner, the rest queued behind it
        # SIGTERM now; the lock goes a moment later, while Prosody's writer retries.
        loop = asyncio.get_running_loop()
        stopping = loop.run_in_executor(None, server.stop)
        await asyncio.sleep(0.5)
    await stopping
    server.start()
    bob = await connect(server, b)  # offline messages arrive after the initial presence
    await wait_delivered(bob, texts[:1])
    await bob.roundtrip()
    got = delivered_bodies(bob, "s")
    assert len(got) == len(set(got)), f"delivered twice: {got}"
    archived = [r.body for r in await mam_all(bob)]
    # What was delivered is archived; the rest of alice's stream was cut by the stop
    # (never processed, so never delivered and never archived).
    assert set(got) <= set(archived), (got, archived)
    assert archived == texts[:len(archived)]
    print(f"stop while held: {len(got)} delivered once each, {len(archived)} archived")


@pytest.mark.sqlite_only(reason="a SQLite file lock held by another process")
async def test_held_deliveries_reach_a_stream_resumed_while_they_wait(prosody_factory, connect):
    """A held stanza goes out through the rest of Prosody's own send without a second
    debug line, but only for a session whose send is its own: one resumed by stream
    management (XEP-0198) while its deliveries wait runs the new connection's send,
    and they must reach the client on that connection, once each."""
    server = prosody_factory("heldresume", {
        "modules_enabled": prosody_config.MODULES + ["smacks"],
        "mam_commit_wait_limit": 30,
    }, users=2)
    a, b = server.take_users(2)
    alice = await connect(server, a)
    bob = Client(server, b, "phone")
    bob.xmpp.register_plugin("xep_0198")
    resumed = asyncio.get_running_loop().create_future()
    bob.xmpp.add_event_handler(
        "session_resumed", lambda _: resumed.done() or resumed.set_result(True))
    try:
        await bob.connect()
        deadline = time.monotonic() + WAIT
        while not bob.xmpp.plugin["xep_0198"].sm_id:
            assert time.monotonic() < deadline, "stream management not enabled"
            await asyncio.sleep(0.02)
        alice.send(chat_xml(bob.bare, "before"))
        await wait_delivered(bob, ["before"])

        texts = [f"r{i}" for i in range(5)]
        with SqliteLock(server):
            await send_held(alice, bob, "r", texts, 0.5)
            # bob's connection breaks (no closing handshake) and he resumes the
            # stream on a new one while the messages still wait.
            bob.xmpp.transport.abort()
            await asyncio.sleep(0.5)
            bob.xmpp.connect(host="127.0.0.1", port=server.port)
            await asyncio.wait_for(resumed, WAIT)
            await asyncio.sleep(0.3)
            assert delivered_bodies(bob, "r") == []  # still held
        await wait_delivered(bob, texts)
        await bob.roundtrip()
        assert delivered_bodies(bob, "r") == texts  # once each, in order
        assert [r.body for r in await mam_all(bob)] == ["before"] + texts
    finally:
        await bob.disconnect()


@pytest.mark.sqlite_only(reason="a SQLite file lock held by another process")
async def test_a_failing_output_filter_costs_only_its_own_held_stanza(prosody_factory, connect):
    """Held stanzas are released in one go per session and commit: when a later
    output filter (another module's) raises an error on one of them, that one is
    lost, as it would be without the hold, and the rest still go out, in order."""
    server = prosody_factory("heldboom", {
        "plugin_paths": [PROBE_DIR],
        "modules_enabled": prosody_config.MODULES + ["mam_filter_probe"],
        "mam_commit_wait_limit": 30,
    }, users=2)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b, "explosive")
    texts = ["m0", "m1", "boom", "m2", "boom", "m3", "m4"]
    with SqliteLock(server):
        await send_held(alice, bob, "m", texts, 0.5)
    want = [t for t in texts if t != "boom"]
    await wait_delivered(bob, want)
    await bob.roundtrip()
    assert delivered_bodies(bob, "m") == want
    assert delivered_bodies(bob, "boom") == []
    failed = log_lines(server, "Sending a stanza held for its commit failed")
    assert len(failed) == 2 and all("probe: boom" in line for line in failed), failed
    # Every one of them is archived, "boom" included: it was committed, then lost on
    # its way out by the other module's filter.
    assert [r.body for r in await mam_all(bob)] == texts
    # The session goes on: the next message is held for its commit and delivered.
    alice.send(chat_xml(bob.bare, "m5"))
    await wait_delivered(bob, ["m5"])
