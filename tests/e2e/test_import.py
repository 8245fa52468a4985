"""Migration from stock mod_mam: a STOCK Prosody archives real messages, we import
its store with `prosodyctl mod_mam import`, and our module then answers the same MAM
queries with the same ids, timestamps, order and content, with the prefs carried over.

Once with mod_storage_internal, once with mod_storage_sql on SQLite3, once with
mod_storage_sql on PostgreSQL (`storage = "sql"`: accounts too; only in the
MAM_TEST_BACKEND=postgres pass, which has a server), and once with mod_storage_sql on
MySQL/MariaDB (`storage = "sql"`, on a private MariaDB server the session starts for
this case only, scripts/mysql-server.sh; only in the sqlite pass, so it runs once per
`make e2e-test`). On the postgres pass our module's archive is in PostgreSQL in every
case: the first two import across backends, the third from Prosody's own table into
ours in the same database (the `sql` table, no `mam_sql`). From MySQL the archive
goes into the embedded SQLite file (MySQL is not an archive database of ours)."""

import pytest

import conftest
from conftest import (
    HOST, PLUGIN_PATH, Prosody, canonical, chat_xml, database_name, get_prefs, mam_all,
    pg_archive, prosodyctl, send_and_flush, set_prefs, use_module,
)

pytestmark = pytest.mark.native_only

BACKENDS = {
    "internal": {"storage": "internal"},
    "sql": {
        "storage": {"archive": "sql", "archive_prefs": "sql"},
        "sql": {"driver": "SQLite3", "database": "prosody.sqlite"},
    },
    # "sql" filled in with a fresh database on the test's PostgreSQL server.
    "sql-postgresql": {"storage": "sql"},
    # "sql" filled in with a fresh database on the session's MariaDB server.
    "sql-mysql": {"storage": "sql"},
}


def snapshot(results):
    """What a client sees of an archive: id, stamp and the message, in order."""
    return [(r.id, r.stamp, canonical(r.message)) for r in results]


@pytest.fixture(params=sorted(BACKENDS))
def stock_server(request):
    options = dict(BACKENDS[request.param])
    database = db_server = None
    if request.param == "sql-postgresql":
        if not pg_archive():
            pytest.skip("needs PostgreSQL: runs with MAM_TEST_BACKEND=postgres")
        db_server = conftest.PG
    elif request.param == "sql-mysql":
        if conftest.BACKEND != "sqlite":
            pytest.skip("MySQL source: runs in the MAM_TEST_BACKEND=sqlite pass only")
        db_server = request.getfixturevalue("mysql_server")  # skips without MariaDB
    if db_server is not None:
        database = db_server.create_database(database_name(f"import-{request.param}"))
        options["sql"] = db_server.connection(database)
    server = None
    try:
        server = Prosody(f"import-{request.param}", options, users=4)
        # Where stock's tables are (on PostgreSQL, ours then too), and on which server.
        server.sql_database = database
        server.sql_server = db_server
        server.sql_kind = request.param.removeprefix("sql-") if database else None
        use_module(server, None)  # stock mod_mam
        server.start()
        yield server
    finally:
        if server is not None:
            server.cleanup()
        if database is not None:
            db_server.drop_database(database)


async def test_stock_archives_come_along_with_ids_order_content_and_prefs(stock_server, connect):
    server = stock_server
    juliet_user, romeo_user, nurse_user = server.take_users(3)
    juliet = await connect(server, juliet_user)
    romeo = await connect(server, romeo_user)
    nurse = await connect(server, nurse_user)

    # Juliet never archives the nurse; always romeo (default stays "always").
    await set_prefs(juliet, "always", always=[romeo.bare], never=[nurse.bare])
    # Several messages per second: stock stamps whole seconds, so only the source's
    # order tells them apart.
    for i in range(6):
        await send_and_flush(juliet, chat_xml(romeo.bare, f"to romeo {i} &lt;&amp;&gt; ü"))
    await send_and_flush(romeo, chat_xml(juliet.bare, "from romeo", extra="<thread>t1</thread>"))
    await send_and_flush(juliet, chat_xml(nurse.bare, "not in juliet's archive"))
    await send_and_flush(nurse, chat_xml(juliet.bare, "nor this"))
    await juliet.roundtrip()

    before = {c.user: snapshot(await mam_all(c)) for c in (juliet, romeo, nurse)}
    with_romeo = snapshot(await mam_all(juliet, with_=romeo.bare))
    prefs = await get_prefs(juliet)
    assert len(before[juliet.user]) == 7, "stock archived juliet's messages with romeo only"
    assert len(before[romeo.user]) == 7
    assert len(before[nurse.user]) == 2
    assert prefs == ("always", [romeo.bare], [nurse.bare])
    for c in (juliet, romeo, nurse):
        await c.disconnect()
    server.stop()

    # Switch to our module and import.
    use_module(server, PLUGIN_PATH)
    # The source is the driver `storage` gives the store unless --from names one.
    source = ["--from", "sql"] if server.sql_database is not None else []
    if server.sql_kind == "mysql":
        # Everything of stock's was in MySQL, so nothing has made the data directory
        # yet; an installed Prosody has one (Debian's /var/lib/prosody), and our
        # archive file goes there.
        (server.dir / "data").mkdir(exist_ok=True)
    if server.sql_kind == "mysql":  # the source really is Prosody's table there
        rows = server.sql_server.sql(
            "SELECT count(*) FROM prosodyarchive WHERE store = 'archive'", server.sql_database)
        assert rows == [("16",)], rows
    first = prosodyctl(server, "mod_mam", "import", *source)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Importing 16 messages of 3 users on {HOST}" in first.stdout, first.stdout
    assert f"{juliet.user}: source 7, archive 7 (7 new, 0 already there) ok" in first.stdout
    assert f"{nurse.user}: source 2, archive 2 (2 new, 0 already there) ok" in first.stdout
    assert "Preferences: 1 imported" in first.stdout, first.stdout
    if server.sql_kind == "postgresql":  # from Prosody's table into ours, one database
        rows = conftest.PG.psql("SELECT count(*) FROM mam_archive", server.sql_database)
        assert rows == [("16",)], rows
        assert not (server.dir / "data" / "mam_archive.sqlite").exists()
    elif server.sql_kind == "mysql":  # from MySQL into the embedded SQLite file
        assert conftest.archive_count(server) == 16

    server.start()
    juliet = await connect(server, juliet_user, "after")
    romeo = await connect(server, romeo_user, "after")
    nurse = await connect(server, nurse_user, "after")
    after = {c.user: snapshot(await mam_all(c)) for c in (juliet, romeo, nurse)}
    assert after == before
    assert snapshot(await mam_all(juliet, with_=romeo.bare)) == with_romeo
    assert await get_prefs(juliet) == ("always", [romeo.bare], [nurse.bare])
    # The imported never rule is in force here too.
    await send_and_flush(nurse, chat_xml(juliet.bare, "still not archived"))
    assert len(await mam_all(juliet)) == 7
    after = {c.user: snapshot(await mam_all(c)) for c in (juliet, romeo, nurse)}

    # While the server runs, a second import (to catch the gap) adds nothing.
    second = prosodyctl(server, "mod_mam", "import", *source)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{juliet.user}: source 7, archive 7 (0 new, 7 already there) ok" in second.stdout
    assert "Preferences: 0 imported" in second.stdout
    assert {c.user: snapshot(await mam_all(c)) for c in (juliet, romeo, nurse)} == after
