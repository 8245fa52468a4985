"""`prosodyctl mod_muc_mam <command>`: room archives of a MUC component.

A STOCK Prosody with stock mod_muc_mam on `Component "rooms.localhost" "muc"` archives
what real MUC clients send to two rooms (one non-anonymous, one semi-anonymous, with
`muc_log_presences` on), in stock's `muc_log` store: through mod_storage_internal,
mod_storage_sql on SQLite3, and (in the MAM_TEST_BACKEND=postgres pass only)
mod_storage_sql on PostgreSQL. Then the configuration switches to this module and
`prosodyctl mod_muc_mam import` copies the rooms' messages into its archive (the
embedded SQLite file, or PostgreSQL on the postgres pass), checked through
`export`/`stats` and through MAM queries to our live module, against what stock
answered its own MAM queries: ids, stamps and
order kept, the occupant's nick kept, `to` gone, joins and leaves beside the room's
messages (`ROOM<presences`) with their ids, a sender's forged
muc#user `<x>` dropped and stock's own real-JID `<x>` kept. Rerunning adds nothing;
`expire`, `delete` and `stats` work per room.

Then our live mod_muc_mam answers the rooms' MAM queries as stock did, and a second
import while it runs catches the gap without adding anything twice."""

import json
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import pytest

import conftest
from conftest import (
    HOST, NS_CLIENT, NS_DELAY, NS_FORWARD, NS_MAM, PLUGIN_PATH, Prosody, build_query,
    canonical, database_name, mam_all, pg_archive, prosodyctl, token, use_module,
)

pytestmark = pytest.mark.native_only

MUC = "rooms.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"

# Every room persistent (a temporary room's archive goes when it empties) and
# non-anonymous unless its owner says otherwise; stock logs joins and leaves too.
ROOM_OPTIONS = {
    "muc_room_locking": False,
    "muc_room_default_persistent": True,
    "muc_room_default_public_jids": True,
    "components": {MUC: {"module": "muc", "modules_enabled": ["muc_mam"],
                         "muc_log_presences": True}},
}

BACKENDS = {
    "internal": {"storage": "internal"},
    "sql": {
        "storage": {"muc_log": "sql"},
        "sql": {"driver": "SQLite3", "database": "prosody.sqlite"},
    },
    # "sql" filled in with a fresh database on the test's PostgreSQL server.
    "sql-postgresql": {"storage": {"muc_log": "sql"}},
}

# A room message from 2010, added to stock's table in the sql cases: expire takes it.
OLD_WHEN = 1275868800


@pytest.fixture(params=sorted(BACKENDS))
def stock_rooms(request):
    options = {**ROOM_OPTIONS, **BACKENDS[request.param]}
    database = None
    if request.param == "sql-postgresql":
        if not pg_archive():
            pytest.skip("needs PostgreSQL: runs with MAM_TEST_BACKEND=postgres")
        database = conftest.PG.create_database(database_name("room-import"))
        options["sql"] = conftest.PG.connection(database)
    server = None
    try:
        server = Prosody(f"room-import-{request.param}", options, users=3)
        server.kind = request.param
        server.sql_database = database
        use_module(server, None)  # stock mod_mam and mod_muc_mam
        server.start()
        yield server
    finally:
        if server is not None:
            server.cleanup()
        if database is not None:
            conftest.PG.drop_database(database)


async def join(client, room, nick):
    client.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>")
    await client.roundtrip()


async def groupchat(client, room, body, extra=""):
    """Sends a groupchat message and waits until the room has echoed it back."""
    body = f"{body} {token()}"
    client.send(f"<message to='{room}' type='groupchat' id='{token()}'><body>{escape(body)}</body>{extra}</message>")
    await client.wait_for_message(
        lambda m: m.get("type") == "groupchat" and m.findtext(f"{{{NS_CLIENT}}}body") == body)
    return body


async def make_semi_anonymous(owner, room):
    form = (f"<query xmlns='{NS_MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
            "<field var='muc#roomconfig_whois'><value>moderators</value></field></x></query>")
    await owner.iq("set", form, to=room)


async def stock_room_archive(client, room):
    """What stock answers a MAM query to the room: (id, stamp, message) in order."""
    queryid = token()
    already = len(client.messages)
    reply = await client.iq("set", build_query(queryid, rsm={"max": 50}), to=room)
    fin = reply.find(f"{{{NS_MAM}}}fin")
    assert fin is not None and fin.get("complete") == "true", ET.tostring(reply)
    out = []
    for m in client.messages[already:]:
        result = m.find(f"{{{NS_MAM}}}result")
        if result is None or result.get("queryid") != queryid:
            continue
        forwarded = result.find(f"{{{NS_FORWARD}}}forwarded")
        out.append((result.get("id"), forwarded.find(f"{{{NS_DELAY}}}delay").get("stamp"),
                    forwarded.find(f"{{{NS_CLIENT}}}message")))
    return out


def export_rows(server, room):
    done = prosodyctl(server, "mod_muc_mam", "export", room, "--format", "jsonl")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    for row in rows:
        row["message"] = ET.fromstring(row["stanza"])
    return rows


def muc_user_items(message):
    return [x.find(f"{{{NS_MUC_USER}}}item") for x in message.findall(f"{{{NS_MUC_USER}}}x")]


def real_jids(message):
    return [item.get("jid") for item in muc_user_items(message)]


def without_muc_user(message):
    """A copy of a message without its muc#user <x> elements."""
    copy = ET.fromstring(ET.tostring(message))
    for x in copy.findall(f"{{{NS_MUC_USER}}}x"):
        copy.remove(x)
    return copy


def stats_rows(server, presences=False):
    """The head line and the messages per room (per `ROOM<presences` with
    `presences`: the rooms' joins and leaves)."""
    done = prosodyctl(server, "mod_muc_mam", "stats")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"host {MUC}: "), done.stdout
    rows = {line.split()[0]: int(line.split()[1]) for line in lines[2:]}
    return lines[0], {k: v for k, v in rows.items() if k.endswith("<presences") == presences}


def add_old_stock_row(server):
    """A message of 2010 in a third room, 'attic', in stock's own table (a copy of a
    row stock wrote, moved in time and room)."""
    sql = ("INSERT INTO prosodyarchive (host, \"user\", store, \"key\", \"when\", \"with\", type, value) "
           f"SELECT host, 'attic', store, 'old-attic-1', {OLD_WHEN}, \"with\", type, "
           "replace(value, 'lobby@', 'attic@') FROM prosodyarchive "
           "WHERE store = 'muc_log' AND \"user\" = 'lobby' AND \"with\" = 'message<groupchat' "
           "ORDER BY sort_id LIMIT 1")
    if server.sql_database is not None:
        conftest.PG.psql(sql, server.sql_database)
    else:
        import sqlite3
        conn = sqlite3.connect(str(server.dir / "data" / "prosody.sqlite"))
        try:
            with conn:
                assert conn.execute(sql).rowcount == 1
        finally:
            conn.close()


async def test_stock_room_archives_come_along_and_admin_commands_work_per_room(stock_rooms, connect):
    server = stock_rooms
    lobby, masked = f"lobby@{MUC}", f"masked@{MUC}"
    alice_user, bob_user = server.take_users(2)
    alice = await connect(server, alice_user)
    bob = await connect(server, bob_user)
    for client, nick in ((alice, "Alice"), (bob, "bob")):
        await join(client, lobby, nick)
        await join(client, masked, nick)
    await make_semi_anonymous(alice, masked)

    sent = {lobby: [], masked: []}
    for i in range(3):  # several in one second: only the source's order tells them apart
        sent[lobby].append(await groupchat(alice, lobby, f"lobby {i} <&> ü"))
    forged = (f"<x xmlns='{NS_MUC_USER}'><item jid='mallory@evil.example' "
              "affiliation='owner' role='moderator'/></x>")
    sent[lobby].append(await groupchat(bob, lobby, "forged in the open", extra=forged))
    sent[masked].append(await groupchat(alice, masked, "masked plain"))
    sent[masked].append(await groupchat(bob, masked, "forged in the mask", extra=forged))

    stock = {room: await stock_room_archive(alice, room) for room in (lobby, masked)}
    for room in (lobby, masked):
        assert [m.findtext(f"{{{NS_CLIENT}}}body") for _, _, m in stock[room]] == sent[room]
    # Stock shows the sender's forged <x> first, its own real-JID one last.
    shown = [item.get("jid") for item in muc_user_items(stock[lobby][3][2])]
    assert shown == ["mallory@evil.example", bob.bare], shown
    for client in (alice, bob):
        await client.disconnect()  # stock logs the leaves as presences too
    server.stop()

    if server.kind != "internal":
        add_old_stock_row(server)

    # Switch to our module and import.
    use_module(server, PLUGIN_PATH)
    source = ["--from", "sql"] if server.kind != "internal" else []
    first = prosodyctl(server, "mod_muc_mam", "import", *source)
    assert first.returncode == 0, first.stdout + first.stderr
    rooms = 2 if server.kind == "internal" else 3
    assert f" of {rooms} rooms on {MUC} from " in first.stdout, first.stdout
    assert "Preferences" not in first.stdout, first.stdout
    presences = {}
    for room in (lobby, masked):
        node = room.split("@")[0]
        n = len(sent[room])
        assert f"{node}: source {n}, archive {n} ({n} new, 0 already there) ok" in first.stdout, first.stdout
        # "lobby<presences: source 4, archive 4 (4 new, 0 already there) ok"
        line = next(x for x in first.stdout.splitlines() if x.strip().startswith(f"{node}<presences: "))
        presences[room] = int(line.split()[2].rstrip(","))
        p = presences[room]
        assert line.strip() == f"{node}<presences: source {p}, archive {p} ({p} new, 0 already there) ok", line
        # Each client joined and left: at least those four presences.
        assert p >= 4, line
    assert "Skipped" not in first.stdout, first.stdout
    if server.kind != "internal":
        assert "attic: source 1, archive 1 (1 new, 0 already there) ok" in first.stdout, first.stdout

    for room in (lobby, masked):
        rows = export_rows(server, room)
        # Ids, stamps and order as stock answered them; the room as the contact.
        assert [(r["id"], r["timestamp"]) for r in rows] == [(i, s) for i, s, _ in stock[room]]
        assert {r["with"] for r in rows} == {room}
        for row, (_, _, theirs) in zip(rows, stock[room]):
            ours = row["message"]
            assert ours.tag == f"{{{NS_CLIENT}}}message"
            assert ours.get("to") is None, row["stanza"]
            assert ours.get("from") == theirs.get("from") and ours.get("type") == "groupchat"
            assert ours.findtext(f"{{{NS_CLIENT}}}body") == theirs.findtext(f"{{{NS_CLIENT}}}body")
    lobby_rows = export_rows(server, lobby)
    # Non-anonymous: stock's own <x> (the real JID) stays, the forged one is gone.
    assert [[i.get("jid") for i in muc_user_items(r["message"])] for r in lobby_rows] == \
        [[alice.bare]] * 3 + [[bob.bare]], [r["stanza"] for r in lobby_rows]
    assert lobby_rows[0]["message"].find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}item").get("affiliation") == "owner"
    # Semi-anonymous: stock added none, so any <x> is the sender's: dropped.
    assert [muc_user_items(r["message"]) for r in export_rows(server, masked)] == [[], []]

    # Rerunning adds nothing.
    second = prosodyctl(server, "mod_muc_mam", "import", *source)
    assert second.returncode == 0, second.stdout + second.stderr
    n, p = len(sent[lobby]), presences[lobby]
    assert f"lobby: source {n}, archive {n} (0 new, {n} already there) ok" in second.stdout, second.stdout
    assert f"lobby<presences: source {p}, archive {p} (0 new, {p} already there) ok" \
        in second.stdout, second.stdout
    head, counts = stats_rows(server)
    assert counts == {"lobby": 4, "masked": 2, **({} if server.kind == "internal" else {"attic": 1})}
    assert f"{rooms} rooms, {6 + rooms - 2} messages, {sum(presences.values())} joins and leaves, " in head, head
    assert stats_rows(server, presences=True)[1] == \
        {"lobby<presences": presences[lobby], "masked<presences": presences[masked]}

    # expire: muc_log_expires_after's default (a week) takes only the 2010 message.
    done = prosodyctl(server, "mod_muc_mam", "expire")
    assert done.returncode == 0, done.stdout + done.stderr
    expired = 0 if server.kind == "internal" else 1
    assert f"{MUC}: deleted {expired} expired messages" in done.stdout, done.stdout
    assert stats_rows(server)[1] == {"lobby": 4, "masked": 2}

    # Our live mod_muc_mam answers the rooms' MAM queries with what stock answered:
    # same ids, stamps, order and messages; the real JID only where stock itself
    # added it, and shown as the room says (the semi-anonymous room's owner, a
    # moderator, would see one; there is none).
    server.start()
    alice = await connect(server, alice_user, "ours")
    bob = await connect(server, bob_user, "ours")
    for client, nick in ((alice, "Alice"), (bob, "bob")):
        await join(client, lobby, nick)
        await join(client, masked, nick)
    for room in (lobby, masked):
        ours = await mam_all(alice, to=room)
        assert [(r.id, r.stamp) for r in ours] == [(i, s) for i, s, _ in stock[room]]
        assert [canonical(without_muc_user(r.message)) for r in ours] == \
            [canonical(without_muc_user(m)) for _, _, m in stock[room]]
    assert [real_jids(r.message) for r in await mam_all(bob, to=lobby)] == \
        [[alice.bare]] * 3 + [[bob.bare]]
    assert [real_jids(r.message) for r in await mam_all(alice, to=masked)] == [[], []]

    # A message archived by ours after the switch; importing again (to catch the
    # gap) adds nothing and verifies.
    sent[lobby].append(await groupchat(bob, lobby, "after the switch"))
    third = prosodyctl(server, "mod_muc_mam", "import", *source)
    assert third.returncode == 0, third.stdout + third.stderr
    n = len(sent[lobby]) - 1
    # Our module has archived the joins of the reconnected clients since the switch.
    assert f"lobby: source {n}, archive {n + 1} (0 new, {n} already there) ok" in third.stdout, third.stdout
    assert f"lobby<presences: source {p}, archive {p + 2} (0 new, {p} already there) ok" \
        in third.stdout, third.stdout
    lobby_ids = [r.id for r in await mam_all(alice, to=lobby)]
    assert len(lobby_ids) == 5

    # delete --with the room's JID and a nick: that occupant's messages only (the nick
    # is the contact's resource), here while Prosody runs.
    done = prosodyctl(server, "mod_muc_mam", "delete", lobby, "--with", f"{lobby}/bob")
    assert done.returncode == 0 and f"{lobby}: deleted 2 messages" in done.stdout, done
    assert [r["id"] for r in export_rows(server, lobby)] == lobby_ids[:3]
    assert [r.id for r in await mam_all(alice, to=lobby)] == lobby_ids[:3]
    # A room by its name alone (the configuration has one MUC component): all of it.
    done = prosodyctl(server, "mod_muc_mam", "delete", "masked")
    assert done.returncode == 0 and f"{masked}: deleted 2 messages" in done.stdout, done
    assert export_rows(server, masked) == []
    # Its joins and leaves went with it.
    assert "masked<presences" not in stats_rows(server, presences=True)[1]
    assert await mam_all(alice, to=masked) == []
    # The import copies whatever stock still holds, the 2010 message too: expiry
    # (ours running, or the command) takes it out again.
    done = prosodyctl(server, "mod_muc_mam", "expire")
    assert done.returncode == 0, done.stdout + done.stderr
    assert stats_rows(server)[1] == {"lobby": 3}


def test_room_commands_name_rooms_and_muc_components(prosody_factory):
    server = prosody_factory("room-usage", {**ROOM_OPTIONS, "components": {MUC: "muc"}}, users=0)
    # No account was made, so nothing has made the data directory (an installed
    # Prosody has one) where the room archive's file goes.
    (server.dir / "data").mkdir(exist_ok=True)
    done = prosodyctl(server, "mod_muc_mam", "stats", "--host", HOST)
    assert done.returncode == 1
    assert f"Host '{HOST}' is not a MUC component in the configuration" in done.stderr
    done = prosodyctl(server, "mod_muc_mam", "delete", f"nobody@{HOST}")
    assert done.returncode == 1, done
    assert f"Host '{HOST}' is not a MUC component in the configuration" in done.stderr
    done = prosodyctl(server, "mod_muc_mam", "delete")
    assert done.returncode == 2 and "Missing ROOM" in done.stderr, done
    for command in ["import", "expire", "delete", "export", "stats"]:
        done = prosodyctl(server, "mod_muc_mam", command, "--help")
        assert done.returncode == 0, done
        assert done.stdout.startswith(f"Usage: prosodyctl mod_muc_mam {command}"), done.stdout
    done = prosodyctl(server, "mod_muc_mam", "stats")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"host {MUC}: 0 rooms, 0 messages"), done.stdout
    assert f"host {HOST}:" not in done.stdout
    # mod_mam still speaks of users and VirtualHosts only.
    done = prosodyctl(server, "mod_mam", "stats")
    assert done.returncode == 0 and done.stdout.startswith(f"host {HOST}: 0 users"), done
    assert f"host {MUC}:" not in done.stdout
