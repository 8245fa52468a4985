"""Room archives (mod_muc_mam on the native engine), end to end.

A real Prosody with a MUC component whose modules_enabled holds muc_mam, and real
XMPP clients joining rooms through slixmpp's XEP-0045 plugin: what occupants receive,
what the room's archive answers (XEP-0313 to the room JID), join history, the room's
own settings, its lifecycle, and where this module is right where stock is not
(docs/room-archives.md lists those differences).
"""

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import (
    BACKEND, NS_CLIENT, NS_DATA, NS_DELAY, NS_DISCO_INFO, NS_MAM, NS_SID, WAIT,
    StanzaError, mam_all, mam_query, prosodyctl, q, wait_log,
)

pytestmark = pytest.mark.native_only  # stock mod_muc_mam differs on purpose (see the docs)

MUC = "rooms.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"


def room_server(prosody_factory, name, users=4, **component_options):
    options = {
        "components": {MUC: {"module": "muc", "modules_enabled": ["muc_mam"], **component_options}},
        "muc_room_locking": False,
        "muc_room_default_persistent": True,
    }
    return prosody_factory(name, options, users=users)


async def join(client, room, nick, **history):
    """Joins through slixmpp's XEP-0045 plugin; returns the history messages received."""
    if "xep_0045" not in client.xmpp.plugin:
        client.xmpp.register_plugin("xep_0045")
    _presence, _subject, _occupants, messages = await client.xmpp.plugin["xep_0045"].join_muc_wait(
        room, nick, timeout=WAIT, **history)
    return messages


def groupchat(room, text, extra=""):
    return f"<message to='{room}' type='groupchat'><body>{text}</body>{extra}</message>"


def body(m):
    return m.findtext(q(NS_CLIENT, "body"))


async def received(client, room, texts, timeout=WAIT):
    """The groupchat messages from `room` carrying these bodies, once all arrived."""
    deadline = time.monotonic() + timeout
    while True:
        got = {body(m): m for m in client.messages
               if m.get("type") == "groupchat" and (m.get("from") or "").startswith(room + "/")}
        if set(texts) <= set(got):
            return [got[t] for t in texts]
        assert time.monotonic() < deadline, f"not received: {set(texts) - set(got)}"
        await asyncio.sleep(0.02)


def room_stanza_ids(message, room):
    return [s.get("id") for s in message.findall(q(NS_SID, "stanza-id")) if s.get("by") == room]


async def configure(owner, room, **fields):
    form = "".join(
        f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
    await owner.iq("set", f"<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
                          f"<field var='FORM_TYPE'><value>{ROOMCONFIG}</value></field>{form}</x></query>",
                   to=room)


async def room_features(client, room):
    reply = await client.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    return {f.get("var") for f in reply.iter(q(NS_DISCO_INFO, "feature"))}


async def test_room_messages_are_archived_under_the_stanza_id_occupants_receive(prosody_factory, connect):
    server = room_server(prosody_factory, "rooms")
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    room = f"lobby@{MUC}"
    await join(alice, room, "alice")
    await join(bob, room, "bob")
    texts = [f"hello {i}" for i in range(5)]
    for t in texts:
        alice.send(groupchat(room, t))
    got = await received(bob, room, texts)
    ids = []
    for m in got:
        sids = room_stanza_ids(m, room)
        assert len(sids) == 1, ET.tostring(m)
        ids.append(sids[0])
    results = await mam_all(bob, to=room)
    assert [r.body for r in results] == texts
    assert [r.id for r in results] == ids
    for r in results:
        assert r.message.get("from") == f"{room}/alice"
        assert r.message.get("to") is None
        assert r.message.get("type") == "groupchat"
    # The archive is the room's, not the occupants' own.
    assert await mam_all(bob) == []
    assert {NS_MAM, "urn:xmpp:mam:2#extended", NS_SID} <= await room_features(bob, room)


async def test_room_queries_honour_with_time_ids_and_paging(prosody_factory, connect):
    server = room_server(prosody_factory, "roomq")
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    room = f"q@{MUC}"
    await join(alice, room, "alice")
    await join(bob, room, "bob")
    for i in range(6):
        (alice if i % 2 == 0 else bob).send(groupchat(room, f"m{i}"))
        await received(alice, room, [f"m{i}"])
    everything = await mam_all(alice, to=room)
    assert [r.body for r in everything] == [f"m{i}" for i in range(6)]
    ids = [r.id for r in everything]

    # `with` the occupant JID: that nick's messages only (stock ignores `with`).
    assert [r.body for r in await mam_all(alice, to=room, with_=f"{room}/bob")] == ["m1", "m3", "m5"]
    assert len(await mam_all(alice, to=room, with_=room)) == 6
    # RSM: the last page, then the one before it.
    last, fin = await mam_query(alice, to=room, rsm={"max": 2, "before": ""})
    assert [r.body for r in last] == ["m4", "m5"] and not fin.complete
    assert fin.count == 6
    before, _ = await mam_query(alice, to=room, rsm={"max": 2, "before": last[0].id})
    assert [r.body for r in before] == ["m2", "m3"]
    # Extended: after-id, before-id, ids, flip-page.
    after, _ = await mam_query(alice, to=room, after_id=ids[3])
    assert [r.body for r in after] == ["m4", "m5"]
    between, _ = await mam_query(alice, to=room, after_id=ids[0], before_id=ids[3])
    assert [r.body for r in between] == ["m1", "m2"]
    chosen, _ = await mam_query(alice, to=room, ids=[ids[4], ids[1]])
    assert [r.body for r in chosen] == ["m1", "m4"]
    flipped, _ = await mam_query(alice, to=room, rsm={"max": 3}, flip=True)
    assert [r.body for r in flipped] == ["m2", "m1", "m0"]
    # Time: start at the fourth message's stamp.
    since, _ = await mam_query(alice, to=room, start=everything[3].stamp)
    assert [r.body for r in since][0] in ("m2", "m3")  # stamps have whole-second precision
    assert "m5" in [r.body for r in since]

    # Unknown ids are errors, not an empty page (stock answers empty for `ids`).
    for bad in ({"ids": ["no-such-id"]}, {"ids": [ids[0], "no-such-id"]}, {"after_id": "no-such-id"}):
        with pytest.raises(StanzaError) as e:
            await mam_query(alice, to=room, **bad)
        assert e.value.condition == "item-not-found", bad
    with pytest.raises(StanzaError) as e:
        await mam_query(alice, to=room, rsm={"after": "no-such-id"})
    assert e.value.condition == "item-not-found"
    # Unknown form fields: feature-not-implemented (stock ignores them).
    with pytest.raises(StanzaError) as e:
        await mam_query(alice, to=room, extra_fields={"urn:example:unknown": "x"})
    assert e.value.condition == "feature-not-implemented"

    # Metadata (stock advertises #extended and never answers it).
    reply = await alice.iq("get", f"<metadata xmlns='{NS_MAM}'/>", to=room)
    meta = reply.find(q(NS_MAM, "metadata"))
    assert meta.find(q(NS_MAM, "start")).get("id") == ids[0]
    assert meta.find(q(NS_MAM, "end")).get("id") == ids[-1]
    # The query form.
    form = await alice.iq("get", f"<query xmlns='{NS_MAM}'/>", to=room)
    fields = {f.get("var") for f in form.iter(q(NS_DATA, "field"))}
    assert {"FORM_TYPE", "with", "start", "end", "ids"} <= fields


async def test_forged_ids_and_muc_user_elements_are_neither_delivered_nor_archived(prosody_factory, connect):
    server = room_server(prosody_factory, "roomforge")
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    room = f"forge@{MUC}"
    await join(alice, room, "alice")
    await join(bob, room, "bob")
    forged = (f"<stanza-id xmlns='{NS_SID}' by='{room}' id='forged-1'/>"
              f"<x xmlns='{NS_MUC_USER}'><item jid='admin@localhost' affiliation='owner' role='moderator'/></x>")
    alice.send(groupchat(room, "forged", forged))
    [m] = await received(bob, room, ["forged"])
    assert "forged-1" not in room_stanza_ids(m, room)
    assert len(room_stanza_ids(m, room)) == 1
    assert m.find(q(NS_MUC_USER, "x")) is None, ET.tostring(m)
    [r] = await mam_all(bob, to=room)
    assert r.id == room_stanza_ids(m, room)[0]
    assert r.message.find(q(NS_MUC_USER, "x")) is None
    assert r.message.find(q(NS_SID, "stanza-id")) is None


async def test_real_jids_are_kept_in_non_anonymous_rooms_and_shown_as_the_room_says(prosody_factory, connect):
    server = room_server(prosody_factory, "roomwhois")
    a, b = server.take_users(2)
    owner, guest = await connect(server, a), await connect(server, b)
    room = f"open@{MUC}"
    await join(owner, room, "owner")
    await configure(owner, room, **{"muc#roomconfig_whois": "anyone"})
    await join(guest, room, "guest")
    guest.send(groupchat(room, "who am i"))
    await received(owner, room, ["who am i"])

    def real_jid(result):
        items = [i.get("jid") for x in result.message.findall(q(NS_MUC_USER, "x"))
                 for i in x.findall(q(NS_MUC_USER, "item"))]
        return items

    [r] = await mam_all(guest, to=room)
    assert real_jid(r) == [guest.bare]
    # Semi-anonymous now: the guest no longer sees it, the owner (a moderator) does.
    await configure(owner, room, **{"muc#roomconfig_whois": "moderators"})
    [r] = await mam_all(guest, to=room)
    assert real_jid(r) == []
    [r] = await mam_all(owner, to=room)
    assert real_jid(r) == [guest.bare]


async def test_members_only_and_hidden_rooms_refuse_outsiders(prosody_factory, connect):
    server = room_server(prosody_factory, "roomacl", users=3)
    a, b, c = server.take_users(3)
    owner, member, outsider = await connect(server, a), await connect(server, b), await connect(server, c)
    room = f"club@{MUC}"
    await join(owner, room, "owner")
    owner.send(groupchat(room, "members only"))
    await received(owner, room, ["members only"])
    await configure(owner, room, **{"muc#roomconfig_membersonly": "1"})
    await owner.iq("set", f"<query xmlns='http://jabber.org/protocol/muc#admin'>"
                          f"<item affiliation='member' jid='{member.bare}'/></query>", to=room)
    assert [r.body for r in await mam_all(member, to=room)] == ["members only"]
    with pytest.raises(StanzaError) as e:
        await mam_query(outsider, to=room)
    assert e.value.condition == "forbidden"

    hidden = f"hidden@{MUC}"
    await join(owner, hidden, "owner")
    await configure(owner, hidden, **{"muc#roomconfig_publicroom": "0"})
    with pytest.raises(StanzaError) as e:
        await mam_query(outsider, to=hidden)
    assert e.value.condition == "forbidden"
    await join(outsider, hidden, "visitor")
    results, _ = await mam_query(outsider, to=hidden)
    assert results == []

    with pytest.raises(StanzaError) as e:
        await mam_query(owner, to=f"nosuchroom@{MUC}")
    assert e.value.condition == "item-not-found"


async def test_join_history_comes_from_the_archive_after_a_restart(prosody_factory, connect):
    server = room_server(prosody_factory, "roomhist")
    a, b = server.take_users(2)
    alice = await connect(server, a)
    room = f"hist@{MUC}"
    await join(alice, room, "alice")
    texts = [f"h{i:02d}" for i in range(30)]
    for t in texts:
        alice.send(groupchat(room, t))
    await received(alice, room, texts)
    alice.xmpp.plugin["xep_0045"].set_subject(room, "The topic")
    await asyncio.sleep(0.3)
    ids = [r.id for r in await mam_all(alice, to=room) if r.body]
    await alice.disconnect()
    # The in-memory history is gone with the process: what comes now is the archive's.
    server.restart()
    bob = await connect(server, b)
    history = await join(bob, room, "bob", maxstanzas=20)
    assert [body(m.xml) for m in history] == texts[-20:]
    for m, want in zip(history, ids[-20:]):
        assert m.xml.get("to") == bob.full
        assert room_stanza_ids(m.xml, room) == [want]
        assert m.xml.find(q(NS_DELAY, "delay")) is not None
    # The subject change is archived (stock does not), and not repeated as history.
    subjects = [r for r in await mam_all(bob, to=room) if r.message.find(q(NS_CLIENT, "subject")) is not None]
    assert [s.message.findtext(q(NS_CLIENT, "subject")) for s in subjects] == ["The topic"]
    # maxchars bounds what history sends.
    carol = await connect(server, a, resource="second")
    short = await join(carol, room, "carol", maxchars=600)
    assert 0 < len(short) < 20
    assert [body(m.xml) for m in short] == texts[-len(short):]


async def test_archiving_can_be_switched_off_per_room(prosody_factory, connect):
    server = room_server(prosody_factory, "roomoff")
    a = server.take_users(1)[0]
    owner = await connect(server, a)
    room = f"quiet@{MUC}"
    await join(owner, room, "owner")
    form = await owner.iq("get", f"<query xmlns='{NS_MUC_OWNER}'/>", to=room)
    fields = {f.get("var"): f for f in form.iter(q(NS_DATA, "field"))}
    assert fields["muc#roomconfig_enablearchiving"].findtext(q(NS_DATA, "value")) in ("1", "true")
    owner.send(groupchat(room, "kept"))
    await received(owner, room, ["kept"])
    await configure(owner, room, **{"muc#roomconfig_enablearchiving": "0"})
    owner.send(groupchat(room, "not kept"))
    [m] = await received(owner, room, ["not kept"])
    assert room_stanza_ids(m, room) == []
    assert NS_MAM not in await room_features(owner, room)
    assert [r.body for r in await mam_all(owner, to=room)] == ["kept"]


async def test_a_destroyed_room_takes_its_archive_with_it(prosody_factory, connect):
    # Without tombstones the room's name can be taken again at once.
    server = room_server(prosody_factory, "roomgone", muc_tombstones=False)
    a = server.take_users(1)[0]
    owner = await connect(server, a)
    room = f"gone@{MUC}"
    await join(owner, room, "owner")
    owner.send(groupchat(room, "soon gone"))
    await received(owner, room, ["soon gone"])
    await owner.iq("set", f"<query xmlns='{NS_MUC_OWNER}'><destroy/></query>", to=room)
    owner.messages.clear()
    await join(owner, room, "owner")
    deadline = time.monotonic() + WAIT
    while await mam_all(owner, to=room):
        assert time.monotonic() < deadline, "the destroyed room's archive is still there"
        await asyncio.sleep(0.1)


def room_stats(server):
    """The head line of `prosodyctl mod_muc_mam stats`."""
    done = prosodyctl(server, "mod_muc_mam", "stats")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()[0]


async def stats_say(server, words):
    deadline = time.monotonic() + WAIT
    while words not in (head := room_stats(server)):
        assert time.monotonic() < deadline, f"stats never said {words!r}: {head}"
        await asyncio.sleep(0.1)


async def test_joins_and_leaves_are_archived_with_muc_log_presences_and_served_to_no_client(
        prosody_factory, connect):
    server = room_server(prosody_factory, "roompresence", muc_log_presences=True, muc_tombstones=False)
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    room = f"hall@{MUC}"
    await join(alice, room, "alice")
    await join(bob, room, "bob")
    alice.send(groupchat(room, "between the joins"))
    await received(bob, room, ["between the joins"])
    bob.xmpp.plugin["xep_0045"].leave_muc(room, "bob")
    # Two joins and a leave, beside the room's one message.
    await stats_say(server, ": 1 rooms, 1 messages, 3 joins and leaves, ")
    # Neither the room's MAM archive nor its join history returns them (as stock).
    results = await mam_all(alice, to=room)
    assert [r.body for r in results] == ["between the joins"]
    assert [r.message.tag for r in results] == [q(NS_CLIENT, "message")]
    bob.messages.clear()
    history = await join(bob, room, "bob")
    assert [body(m.xml) for m in history] == ["between the joins"]
    await stats_say(server, ": 1 rooms, 1 messages, 4 joins and leaves, ")
    # A room whose archiving is off stores none.
    quiet = f"quiet@{MUC}"
    await join(alice, quiet, "alice")
    await configure(alice, quiet, **{"muc#roomconfig_enablearchiving": "0"})
    await join(bob, quiet, "bob")
    await stats_say(server, ": 1 rooms, 1 messages, 5 joins and leaves, ")
    # A destroyed room takes its joins and leaves with its messages.
    await alice.iq("set", f"<query xmlns='{NS_MUC_OWNER}'><destroy/></query>", to=room)
    await stats_say(server, ": 0 rooms, 0 messages, ")


async def test_room_quota_and_expiry_apply_per_room(prosody_factory, connect):
    server = room_server(prosody_factory, "roomquota", storage_archive_item_limit=3,
                         muc_log_expires_after=3, archive_cleanup_interval=1)
    a = server.take_users(1)[0]
    owner = await connect(server, a)
    room, other = f"small@{MUC}", f"other@{MUC}"
    await join(owner, room, "owner")
    await join(owner, other, "owner")
    texts = [f"q{i}" for i in range(6)]
    for t in texts:
        owner.send(groupchat(room, t))
    owner.send(groupchat(other, "elsewhere"))
    await received(owner, room, texts)
    await received(owner, other, ["elsewhere"])
    assert [r.body for r in await mam_all(owner, to=room)] == texts[-3:]
    assert [r.body for r in await mam_all(owner, to=other)] == ["elsewhere"]
    # Three seconds on, expiry (every second here) removes them.
    deadline = time.monotonic() + 3 + WAIT
    while await mam_all(owner, to=room) or await mam_all(owner, to=other):
        assert time.monotonic() < deadline, "room messages did not expire"
        await asyncio.sleep(0.5)


@pytest.mark.sqlite_only(reason="which SQLite files exist")
async def test_personal_and_room_archives_run_side_by_side_on_their_own_files(prosody_factory, connect):
    server = room_server(prosody_factory, "roomboth")
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    room = f"both@{MUC}"
    await join(alice, room, "alice")
    alice.send(groupchat(room, "in the room"))
    alice.send(f"<message to='{bob.bare}' type='chat'><body>in private</body></message>")
    await received(alice, room, ["in the room"])
    await bob.wait_for_message(lambda m: body(m) == "in private")
    assert [r.body for r in await mam_all(alice, to=room)] == ["in the room"]
    assert [r.body for r in await mam_all(alice)] == ["in private"]
    data = server.dir / "data"
    assert (data / "mam_archive.sqlite").is_file()
    assert (data / "mam_muc_log.sqlite").is_file()
    await wait_log(server, "room archives")


ROOM_KILL_ROUNDS = max(1, int(__import__("os").environ.get("MAM_TEST_KILL_ROUNDS", "10")) // 2)


async def test_kill_9_under_load_never_leaves_a_delivered_room_message_out_of_the_archive(prosody_factory, connect):
    """What occupants were given with the room's stanza-id is in the room's archive
    after a crash (the same output barrier as personal archives)."""
    import random
    from test_faults import kill_hard
    senders = 3
    server = room_server(prosody_factory, "roomkill", users=senders + 1)
    users = server.take_users(senders + 1)
    room = f"crash@{MUC}"
    seed = time.time_ns()
    rng = random.Random(seed)

    async def pump(client, prefix, stop_at):
        n = 0
        while time.monotonic() < stop_at and n < 3000:
            for _ in range(8):
                client.send(groupchat(room, f"{prefix}-{n}"))
                n += 1
            await asyncio.sleep(0.004)

    for round_ in range(ROOM_KILL_ROUNDS):
        if server.proc is None:
            server.start()
        clients = [await connect(server, u, resource=f"r{round_}") for u in users]
        for i, c in enumerate(clients):
            await join(c, room, f"o{i}-{round_}")
            if round_ == 0 and i == 0:
                # Saved now (a configuration change is), so the room outlives the crash.
                await configure(c, room, **{"muc#roomconfig_persistentroom": "1"})
        receiver = clients[-1]
        # One message through first: the round then always has something delivered,
        # however slow commits are on a busy machine.
        clients[0].send(groupchat(room, f"k{round_}.warm-0"))
        await received(receiver, room, [f"k{round_}.warm-0"])
        stop_at = time.monotonic() + rng.uniform(0.2, 0.8)
        await asyncio.gather(*[pump(c, f"k{round_}.{i}", stop_at) for i, c in enumerate(clients[:-1])])
        kill_hard(server)
        # What the server wrote before it died and the client had not read yet
        # counts as given too.
        await asyncio.sleep(0.5)
        given = {}
        for m in receiver.messages:
            sids = room_stanza_ids(m, room)
            text = body(m)
            if m.get("type") == "groupchat" and text and text.startswith(f"k{round_}.") and sids:
                given[text] = sids[0]
        for c in clients:
            c.xmpp.abort()
        server.start()
        checker = await connect(server, users[-1], resource=f"check{round_}")
        # Rooms are hidden by default: their archive is for occupants and members.
        await join(checker, room, f"check{round_}")
        archived = {r.body: r.id for r in await mam_all(checker, page=200, to=room)
                    if (r.body or "").startswith(f"k{round_}.")}
        missing = {t: sid for t, sid in given.items() if archived.get(t) != sid}
        assert given, f"round {round_}: nothing was delivered before the kill"
        assert not missing, f"seed {seed}, round {round_}: {len(missing)} delivered but not archived"
        for i in range(senders):
            numbers = [int(t.rsplit("-", 1)[1]) for t in archived if t.startswith(f"k{round_}.{i}-")]
            assert numbers == sorted(numbers), "one sender's messages are out of order in the archive"
        await checker.disconnect()
