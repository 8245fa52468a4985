"""Encryption at rest of the SQLite archive (issue 18, items 4 and 5), against a real
Prosody: SQLCipher keyed by `mam_database_key` or `mam_sql`'s `password`.

- With a key, the archive works as without one, and neither the database file nor
  its write-ahead log holds any message text or JID (searched as `strings`/`grep`
  would: the raw bytes), while Prosody runs and after it stops; Python's plain SQLite
  cannot read the file.
- A wrong key, or none, at start-up after a crash (kill -9, the write-ahead log left
  beside the file): one log line naming the file and the option (never the key), MAM
  answers a temporary error (wait, internal-server-error), the messages are still
  delivered, the file and its log are left byte for byte as they were (no new empty
  database over them, no checkpoint); with the key fixed and Prosody restarted, every
  message archived before is there.
- A key for an archive written without one is refused the same way; `prosodyctl
  mod_mam import --from mam-sqlite` from the old file encrypts it (ids kept), and
  `MAM_SOURCE_KEY` reads an encrypted source (a change of key).
- prosodyctl's stats, export and expire work on an encrypted archive and fail with a
  clear line and exit 1 on a wrong key.
- Room archives (mod_muc_mam) read their own key, muc_mam_database_key, for their
  own file.
- PostgreSQL (MAM_TEST_BACKEND=postgres): the key option does not apply, which the
  log says once; archiving works as before.
"""

import os
import signal
import sqlite3
import subprocess

import pytest

from conftest import (
    HOST, NS_CLIENT, PLUGIN_PATH, WAIT, Prosody, StanzaError, chat_xml, get_prefs, log_lines, mam_all,
    mam_query, prosody_program, prosodyctl, q, send_and_flush, set_prefs, use_module, wait_log,
)

pytestmark = pytest.mark.native_only  # stock has no such option

KEY = "correct horse battery staple"
SECRET = "the-launch-code-is-0000"  # in every message body: must never be on disk in clear
PLAIN_HEADER = b"SQLite format 3\x00"


def archive_file(server, name="mam_archive.sqlite"):
    return server.dir / "data" / name


def reconfigure(server, **options):
    """Rewrite a stopped server's config with `options` changed (None removes one)."""
    assert server.proc is None, "stop the server first"
    for name, value in options.items():
        if value is None:
            server.options.pop(name, None)
        else:
            server.options[name] = value
    server.cfg.write_text(server.render(PLUGIN_PATH))


def on_disk(path):
    """The bytes of the database file and of its -wal, if there is one."""
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        data += wal.read_bytes()
    return data


def assert_no_clear_text(path, *needles):
    data = on_disk(path)
    assert data, "the archive file is empty"
    assert not data.startswith(PLAIN_HEADER), "the file is plain SQLite"
    for needle in needles:
        assert needle.encode() not in data, f"{needle!r} is readable in {path} or its -wal"


def body(m):
    return m.findtext(q(NS_CLIENT, "body"))


async def converse(server, connect, users, texts):
    a, b = users
    alice, bob = await connect(server, a), await connect(server, b)
    for text in texts:
        await send_and_flush(alice, chat_xml(bob.bare, text))
    return alice, bob


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite file")
async def test_an_encrypted_archive_works_and_neither_its_file_nor_its_log_holds_message_text(connect):
    server = Prosody("crypt-works", {"mam_database_key": KEY}, users=4)
    try:
        server.start()
        users = server.take_users(2)
        texts = [f"{SECRET} #{i}" for i in range(30)]
        alice, bob = await converse(server, connect, users, texts)
        archived = await mam_all(bob)
        assert [r.body for r in archived] == texts
        path = archive_file(server)
        # While Prosody runs: the writes sit in the write-ahead log (or the file).
        assert path.with_name(path.name + "-wal").exists()
        assert_no_clear_text(path, SECRET, f"{users[0]}@{HOST}", "jabber:client")
        with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=WAIT) as db:
                db.execute("SELECT count(*) FROM archive").fetchone()
        await alice.disconnect()
        await bob.disconnect()
        server.restart()
        bob = await connect(server, users[1], "again")
        again = await mam_all(bob)
        assert [(r.id, r.body) for r in again] == [(r.id, r.body) for r in archived]
        await bob.disconnect()
        server.stop()
        assert_no_clear_text(path, SECRET, f"{users[0]}@{HOST}", "jabber:client")
        assert KEY not in server.log_text(), "the key is in the log"
    finally:
        server.cleanup()


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite file")
async def test_mam_sql_s_password_is_the_key_of_the_file_it_names_as_in_prosody_13(connect):
    mam_sql = {"driver": "SQLite3", "database": "named.sqlite", "password": KEY}
    server = Prosody("crypt-mam-sql", {"mam_sql": mam_sql}, users=2)
    try:
        server.start()
        users = server.take_users(2)
        alice, bob = await converse(server, connect, users, [SECRET])
        assert [r.body for r in await mam_all(bob)] == [SECRET]
        await alice.disconnect()
        await bob.disconnect()
        server.stop()
        assert_no_clear_text(archive_file(server, "named.sqlite"), SECRET)
    finally:
        server.cleanup()


async def start_refused(server, needle):
    """Start with a config the archive refuses: one line naming the file and `needle`."""
    seen = len(log_lines(server, "cannot open the archive database"))  # earlier starts
    server.start()
    await wait_log(server, needle)
    lines = log_lines(server, "cannot open the archive database")[seen:]
    assert len(lines) == 1, lines
    assert str(archive_file(server)) in lines[0] and needle in lines[0], lines[0]
    return lines[0]


async def assert_temporary_error_and_delivery(server, connect, users, label):
    alice, bob = await connect(server, users[0], label), await connect(server, users[1], label)
    alice.send(chat_xml(bob.bare, f"still delivered {label}"))
    await bob.wait_for_message(lambda m: body(m) == f"still delivered {label}")
    with pytest.raises(StanzaError) as info:
        await mam_query(bob, rsm={"max": 5})
    assert (info.value.type, info.value.condition) == ("wait", "internal-server-error")
    assert server.proc.poll() is None, "Prosody stopped"
    await alice.disconnect()
    await bob.disconnect()


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite file")
async def test_a_wrong_or_missing_key_is_one_log_line_and_a_temporary_error_until_fixed(connect):
    server = Prosody("crypt-wrong-key", {"mam_database_key": KEY}, users=2)
    try:
        server.start()
        users = server.take_users(2)
        texts = [f"{SECRET} before #{i}" for i in range(5)]
        alice, bob = await converse(server, connect, users, texts)
        archived = await mam_all(bob)
        await alice.disconnect()
        await bob.disconnect()
        # A crash, so that the write-ahead log is left beside the file: a connection
        # with a wrong key must not checkpoint it into the file or delete it either.
        kill_hard(server)
        path = archive_file(server)
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and wal.stat().st_size > 0
        before = (path.read_bytes(), wal.read_bytes())

        reconfigure(server, mam_database_key="not the key")
        line = await start_refused(server, "wrong key (mam_database_key)")
        assert "not the key" not in server.log_text() and KEY not in line
        # SQLCipher's own log (two stderr lines per failed decryption) is off.
        assert "sqlite3Codec" not in (server.dir / "stdout.log").read_text(errors="replace")
        await assert_temporary_error_and_delivery(server, connect, users, "wrong")
        server.stop()
        assert (path.read_bytes(), wal.read_bytes()) == before, "the module wrote to a file it could not read"

        reconfigure(server, mam_database_key=None)
        await start_refused(server, "missing key (set mam_database_key)")
        await assert_temporary_error_and_delivery(server, connect, users, "missing")
        server.stop()
        assert (path.read_bytes(), wal.read_bytes()) == before, "a new empty database replaced the archive"

        reconfigure(server, mam_database_key=KEY)
        server.start()
        bob = await connect(server, users[1], "fixed")
        assert [(r.id, r.body) for r in await mam_all(bob)] == [(r.id, r.body) for r in archived]
        await bob.disconnect()
    finally:
        server.cleanup()


def kill_hard(server):
    """kill -9 by PID, as a crash would."""
    proc, server.proc = server.proc, None
    Prosody.running.discard(server)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT)


def prosodyctl_env(server, env, *args):
    return subprocess.run(
        [prosody_program("prosodyctl"), "--config", str(server.cfg), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite file")
async def test_a_key_for_a_plain_archive_is_refused_and_an_import_encrypts_it_keeping_ids(connect):
    # Uncompressed, so the plain file shows the text in clear: the proof that the
    # clear-text checks after the import can fail.
    server = Prosody("crypt-encrypt", {"archive_compression": False}, users=2)
    try:
        server.start()
        users = server.take_users(2)
        texts = [f"{SECRET} plain #{i}" for i in range(8)]
        alice, bob = await converse(server, connect, users, texts)
        archived = await mam_all(bob)
        await alice.disconnect()
        await bob.disconnect()
        server.stop()
        path = archive_file(server)
        before = path.read_bytes()
        assert before.startswith(PLAIN_HEADER) and SECRET.encode() in before

        reconfigure(server, mam_database_key=KEY)
        await start_refused(server, "is not encrypted but mam_database_key sets a key")
        server.stop()
        assert path.read_bytes() == before

        # The documented way: move the plain file aside, import it into the new one.
        plain = path.with_name("plain-before-encryption.sqlite")
        path.rename(plain)
        r = prosodyctl(server, "mod_mam", "import", "--from", "mam-sqlite", "--source", str(plain))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"into {path}" in r.stdout, r.stdout
        assert_no_clear_text(path, SECRET, HOST)

        # A change of key: the encrypted file as a source, its key in MAM_SOURCE_KEY.
        server.stop()
        rekeyed = path.with_name("rekeyed.sqlite")
        reconfigure(server, mam_database="rekeyed.sqlite", mam_database_key="a new key")
        r = prosodyctl_env(server, {}, "mod_mam", "import", "--from", "mam-sqlite", "--source", str(path))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "missing key (set MAM_SOURCE_KEY)" in r.stderr, r.stderr
        r = prosodyctl_env(server, {"MAM_SOURCE_KEY": KEY}, "mod_mam", "import", "--from", "mam-sqlite",
                           "--source", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert KEY not in r.stdout + r.stderr
        assert_no_clear_text(rekeyed, SECRET, HOST)

        server.start()
        bob = await connect(server, users[1], "encrypted")
        assert [(r.id, r.stamp, r.body) for r in await mam_all(bob)] == \
            [(r.id, r.stamp, r.body) for r in archived]
        await bob.disconnect()
    finally:
        server.cleanup()


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite file")
async def test_prosodyctl_stats_export_and_expire_read_an_encrypted_archive(connect):
    server = Prosody("crypt-admin", {"mam_database_key": KEY}, users=2)
    try:
        server.start()
        users = server.take_users(2)
        alice, bob = await converse(server, connect, users, [f"{SECRET} {i}" for i in range(3)])
        await alice.disconnect()
        await bob.disconnect()
        r = prosodyctl(server, "mod_mam", "stats")
        assert r.returncode == 0, r.stderr
        assert f"host {HOST}: " in r.stdout and users[1] in r.stdout, r.stdout
        r = prosodyctl(server, "mod_mam", "export", f"{users[1]}@{HOST}", "--format", "jsonl")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) == 3 and SECRET in r.stdout
        r = prosodyctl(server, "mod_mam", "expire")
        assert r.returncode == 0, r.stderr
        server.stop()

        reconfigure(server, mam_database_key="wrong")
        for args in (["stats"], ["export", f"{users[1]}@{HOST}"], ["expire"]):
            r = prosodyctl(server, "mod_mam", *args)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert "wrong key (mam_database_key)" in r.stderr, (args, r.stderr)
            assert "wrong" not in r.stdout
    finally:
        server.cleanup()


async def test_stock_s_sql_store_with_a_password_imports_through_the_native_reader(connect):
    """Stock mod_mam on mod_storage_sql, SQLite3 with a `password` (Prosody 13's
    SQLCipher setting). Debian's LuaDBI has no SQLCipher, so stock's file is plain here
    and Prosody's own driver reads it; the import takes the native reader for any
    `sql.password` (an encrypted stock file, with the key, is the unit tests' case:
    src/admin/stock_file.rs), keeps ids, stamps, order and preferences, and writes
    them into our encrypted archive."""
    options = {
        "storage": {"archive": "sql", "archive_prefs": "sql"},
        "sql": {"driver": "SQLite3", "database": "prosody.sqlite", "password": KEY},
        "mam_database_key": "our own key",
    }
    server = Prosody("crypt-stock", options, users=2)
    try:
        use_module(server, None)  # stock mod_mam
        server.start()
        a, b = server.take_users(2)
        juliet, romeo = await connect(server, a), await connect(server, b)
        await set_prefs(juliet, "roster", always=[romeo.bare], never=["nurse@" + HOST])
        for i in range(4):
            await send_and_flush(juliet, chat_xml(romeo.bare, f"{SECRET} stock #{i}"))
        before = [(r.id, r.stamp, r.body) for r in await mam_all(juliet)]
        assert len(before) == 4
        await juliet.disconnect()
        await romeo.disconnect()
        server.stop()

        use_module(server, PLUGIN_PATH)
        r = prosodyctl(server, "mod_mam", "import")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"sql store 'archive' in {server.dir / 'data' / 'prosody.sqlite'}" in r.stdout, r.stdout
        assert f"{a}: source 4, archive 4 (4 new, 0 already there) ok" in r.stdout, r.stdout
        assert "Preferences: 1 imported" in r.stdout, r.stdout
        assert KEY not in r.stdout + r.stderr
        if server.pg_database is None:  # on the postgres pass our archive is there
            assert_no_clear_text(archive_file(server), SECRET)

        server.start()
        juliet = await connect(server, a, "after")
        assert [(r.id, r.stamp, r.body) for r in await mam_all(juliet)] == before
        assert await get_prefs(juliet) == ("roster", [romeo.bare], ["nurse@" + HOST])
        await juliet.disconnect()
    finally:
        server.cleanup()


MUC = "rooms.localhost"


async def join_room(client, room, nick):
    if "xep_0045" not in client.xmpp.plugin:
        client.xmpp.register_plugin("xep_0045")
    await client.xmpp.plugin["xep_0045"].join_muc_wait(room, nick, timeout=WAIT)


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite file")
async def test_room_archives_take_their_own_key_for_their_own_file(connect):
    options = {
        "mam_database_key": KEY,
        "components": {MUC: {"module": "muc", "modules_enabled": ["muc_mam"],
                             "muc_mam_database_key": "the rooms' key"}},
        "muc_room_locking": False,
        "muc_room_default_persistent": True,
    }
    server = Prosody("crypt-rooms", options, users=2)
    try:
        server.start()
        a, b = server.take_users(2)
        alice, bob = await connect(server, a), await connect(server, b)
        room = f"vault@{MUC}"
        await join_room(alice, room, "alice")
        await join_room(bob, room, "bob")
        texts = [f"{SECRET} in the room #{i}" for i in range(5)]
        for text in texts:
            alice.send(f"<message to='{room}' type='groupchat'><body>{text}</body></message>")
        for text in texts:
            await bob.wait_for_message(lambda m, t=text: m.get("type") == "groupchat" and body(m) == t)
        assert [r.body for r in await mam_all(bob, to=room)] == texts
        rooms_file = archive_file(server, "mam_muc_log.sqlite")
        assert_no_clear_text(rooms_file, SECRET, room)
        await alice.disconnect()
        await bob.disconnect()
        server.stop()
        assert_no_clear_text(rooms_file, SECRET, room)
        # Each file has its own key: the personal one does not open the rooms' file.
        reconfigure(server, components={MUC: {"module": "muc", "modules_enabled": ["muc_mam"],
                                              "muc_mam_database_key": KEY}})
        await start_refused_on(server, rooms_file, "wrong key (muc_mam_database_key)")
    finally:
        server.cleanup()


async def start_refused_on(server, path, needle):
    """Start with a config the file at `path` refuses: one line naming it and `needle`."""
    server.start()
    await wait_log(server, needle)
    lines = [line for line in log_lines(server, "cannot open the archive database") if needle in line]
    assert len(lines) == 1 and str(path) in lines[0], lines


@pytest.mark.postgres_only
async def test_with_postgresql_the_key_option_is_one_warning_and_archiving_goes_on(connect):
    server = Prosody("crypt-pg", {"mam_database_key": KEY}, users=2)
    try:
        server.start()
        await wait_log(server, "mam_database_key is ignored: the archive is in PostgreSQL")
        assert len(log_lines(server, "mam_database_key is ignored")) == 1
        users = server.take_users(2)
        alice, bob = await converse(server, connect, users, ["kept in postgres"])
        assert [r.body for r in await mam_all(bob)] == ["kept in postgres"]
        await alice.disconnect()
        await bob.disconnect()
        assert not archive_file(server).exists()
    finally:
        server.cleanup()
