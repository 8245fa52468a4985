"""Moving an archive between backends with `prosodyctl mod_mam import --from
mam-sqlite|mam-postgres`: a Prosody with our module on SQLite archives real messages;
a second Prosody configured for another archive (a PostgreSQL database through
`mam_sql`, or another SQLite file) imports the first one's while it still runs, and
then answers the same MAM queries with the same ids, timestamps, order, content,
resources and preferences; then back from PostgreSQL to a fresh SQLite file.

The PostgreSQL test needs a server and a role that may create databases
(MAM_TEST_PG_HOST, MAM_TEST_PG_PORT, MAM_TEST_PG_USER, MAM_TEST_PG_PASSWORD, as
scripts/with-postgres.sh exports them) and `psql`; without them it is skipped and says
why. It creates its own database and drops it afterwards."""

import os
import shutil
import sqlite3
import subprocess
import uuid

import pytest

from conftest import (
    HOST, WAIT, PgServer, Prosody, canonical, chat_xml, get_prefs, mam_all, prosody_program,
    prosodyctl,
    send_and_flush, set_prefs,
)

pytestmark = pytest.mark.native_only

ARCHIVE_FILE = "mam_archive.sqlite"  # what the module uses when nothing else is set


# --------------------------------------------------------------------------- PostgreSQL

@pytest.fixture
def pg_database():
    """A fresh, empty database of our own: (server, name); dropped afterwards."""
    pg = PgServer.from_env()
    if pg is None:
        pytest.skip("needs a PostgreSQL server: set MAM_TEST_PG_HOST, MAM_TEST_PG_PORT, "
                    "MAM_TEST_PG_USER and MAM_TEST_PG_PASSWORD (a role with CREATEDB), "
                    "e.g. by running under scripts/with-postgres.sh")
    if shutil.which("psql") is None:
        pytest.skip("needs psql (postgresql-client) to create and inspect the test database")
    name = pg.create_database(f"e2e_backend_move_{uuid.uuid4().hex[:12]}")
    try:
        yield pg, name
    finally:
        if os.environ.get("E2E_KEEP") != "1":
            pg.drop_database(name)


# --------------------------------------------------------------------------- servers

@pytest.fixture
def servers():
    """make(name, options) -> a Prosody, NOT started (imports run before its first
    start, as an admin would run them before switching); all cleaned up afterwards."""
    made = []

    def make(name, options):
        server = Prosody(f"move-{name}", options, users=3)
        made.append(server)
        return server

    yield make
    for server in made:
        server.cleanup()


def prosodyctl_with(server, env, *args):
    """prosodyctl with extra environment variables (e.g. PGPASSWORD)."""
    return subprocess.run(
        [prosody_program("prosodyctl"), "--config", str(server.cfg), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


# --------------------------------------------------------------------------- archives

def snapshot(results):
    """What a client sees of an archive: id, stamp and the message, in order."""
    return [(r.id, r.stamp, canonical(r.message)) for r in results]


async def view(server, connect, users, resource):
    """Everything the three users can see through MAM: each archive, juliet's with
    romeo as a bare JID and at each resource, and juliet's preferences."""
    juliet_user, romeo_user, nurse_user = users
    clients = [await connect(server, u, resource) for u in users]
    juliet = clients[0]
    romeo_bare = f"{romeo_user}@{HOST}"
    seen = {
        "archives": {c.user: snapshot(await mam_all(c)) for c in clients},
        "with romeo": snapshot(await mam_all(juliet, with_=romeo_bare)),
        "with romeo/orchard": snapshot(await mam_all(juliet, with_=f"{romeo_bare}/orchard")),
        "with romeo/balcony": snapshot(await mam_all(juliet, with_=f"{romeo_bare}/balcony")),
        "prefs": await get_prefs(juliet),
    }
    for c in clients:
        await c.disconnect()
    return seen


async def converse(server, connect):
    """Three users talk on `server`; returns their names and what they see."""
    users = server.take_users(3)
    juliet_user, romeo_user, nurse_user = users
    juliet = await connect(server, juliet_user, "chamber")
    orchard = await connect(server, romeo_user, "orchard")
    balcony = await connect(server, romeo_user, "balcony")
    nurse = await connect(server, nurse_user, "kitchen")
    await set_prefs(juliet, "always", always=[orchard.bare], never=[nurse.bare])
    # Several messages within a moment: only archive order tells them apart.
    for i in range(5):
        await send_and_flush(juliet, chat_xml(orchard.bare, f"to romeo {i} &lt;&amp;&gt; ü"))
    await send_and_flush(orchard, chat_xml(juliet.bare, "from the orchard", extra="<thread>t1</thread>"))
    await send_and_flush(balcony, chat_xml(juliet.bare, "from the balcony"))
    await send_and_flush(orchard, chat_xml(juliet.full, "to her resource"))
    await send_and_flush(nurse, chat_xml(juliet.bare, "not in juliet's archive"))
    await send_and_flush(juliet, chat_xml(nurse.bare, "nor this"))
    for c in (juliet, orchard, balcony, nurse):
        await c.disconnect()
    seen = await view(server, connect, users, "look")
    archived = {user: len(items) for user, items in seen["archives"].items()}
    assert archived == {juliet_user: 8, romeo_user: 8, nurse_user: 2}, archived
    assert len(seen["with romeo/orchard"]) == 2 and len(seen["with romeo/balcony"]) == 1
    assert seen["prefs"] == ("always", [orchard.bare], [nurse.bare])
    return users, seen


def assert_imported(result, source, destination, total=18):
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert (f"Importing {total} messages of 3 users on {HOST} from {source} into {destination}"
            in result.stdout), out
    assert "Preferences: 1 imported" in result.stdout, out
    assert "MISMATCH" not in out, out


# --------------------------------------------------------------------------- tests

async def test_an_archive_moves_to_another_sqlite_file_and_the_configured_one_is_refused(
        servers, connect):
    old = servers("sqlite", {"mam_database": ARCHIVE_FILE}).start()
    users, before = await converse(old, connect)
    old_file = old.dir / "data" / ARCHIVE_FILE

    # The configured archive itself, however named, is no source.
    for args in (["--from", "mam-sqlite"], ["--from", "mam-sqlite", "--source", ARCHIVE_FILE],
                 ["--from", "mam-sqlite", "--source", str(old_file)]):
        r = prosodyctl(old, "mod_mam", "import", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "is the archive this host is configured to use" in r.stderr, r.stderr

    new = servers("other-file", {"mam_database": "moved.sqlite"})
    # While the old server still runs and holds its file open.
    r = prosodyctl(new, "mod_mam", "import", "--from", "mam-sqlite", "--source", str(old_file))
    assert_imported(r, old_file, new.dir / "data" / "moved.sqlite")
    new.start()
    assert await view(new, connect, users, "after") == before


async def test_an_archive_moves_from_sqlite_to_postgresql_and_back(servers, connect, pg_database):
    pg, database = pg_database
    old = servers("sqlite", {"mam_database": ARCHIVE_FILE}).start()
    users, before = await converse(old, connect)
    old_file = old.dir / "data" / ARCHIVE_FILE

    # SQLite -> PostgreSQL, while the old server runs.
    in_pg = servers("postgres", {"mam_sql": pg.connection(database)})
    host, port, user, password = pg.host, pg.port, pg.user, pg.password
    described = f"postgresql://{user}@{host}:{port}/{database}"
    first = prosodyctl(in_pg, "mod_mam", "import", "--from", "mam-sqlite", "--source", str(old_file))
    assert_imported(first, old_file, described)
    again = prosodyctl(in_pg, "mod_mam", "import", "--from", "mam-sqlite", "--source", str(old_file))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{users[0]}: source 8, archive 8 (0 new, 8 already there) ok" in again.stdout, again.stdout
    assert "Preferences: 0 imported" in again.stdout
    # Row for row, resources included (the file's and the database's own counts).
    counted = "SELECT count(*), count(with_resource) FROM {}"
    with sqlite3.connect(f"file:{old_file}?mode=ro", uri=True) as db:
        in_file = db.execute(counted.format("archive")).fetchone()
    assert in_file[0] == 18 and in_file[1] > 0, in_file
    assert pg.psql(counted.format("mam_archive"), database) == [tuple(map(str, in_file))]
    assert not (in_pg.dir / "data" / ARCHIVE_FILE).exists(), "the archive went to PostgreSQL"

    in_pg.start()
    assert await view(in_pg, connect, users, "pg") == before
    old.stop()

    # The configured database is no source, even spelled another way.
    other_spelling = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host, host)
    same = f"host={other_spelling} port={port} user={user} password={password} dbname={database}"
    r = prosodyctl(in_pg, "mod_mam", "import", "--from", "mam-postgres", "--source", same)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is the archive this host is configured to use" in r.stderr, r.stderr
    assert password not in r.stdout + r.stderr

    # PostgreSQL -> a fresh SQLite file, while the PostgreSQL server runs; the password
    # comes from PGPASSWORD this time, and is never printed.
    back = servers("back", {"mam_database": "back.sqlite"})
    url = f"postgresql://{user}@{host}:{port}/{database}"
    r = prosodyctl_with(back, {"PGPASSWORD": password},
                        "mod_mam", "import", "--from", "mam-postgres", "--source", url)
    assert_imported(r, described, back.dir / "data" / "back.sqlite")
    assert password not in r.stdout + r.stderr
    back.start()
    assert await view(back, connect, users, "back") == before
