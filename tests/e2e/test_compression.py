"""Compressed archives (issue 18, `archive_compression`) on a real Prosody, both backends:
messages archived with compression off are compressed by the background rewrite once it
is on, and every message reads back through MAM exactly as before; new messages are
stored compressed; turning compression off again leaves every row readable."""

import asyncio
import sqlite3
import time

import conftest
from conftest import NS_CLIENT, PLUGIN_PATH, WAIT, chat_xml, mam_all, q, send_and_flush, wait_log


def stored_forms(server):
    """(text rows, compressed rows) in the server's archive table."""
    if server.pg_database is not None:
        rows = conftest.PG.psql("SELECT count(stanza), count(stanza_z) FROM mam_archive",
                                server.pg_database)
        return int(rows[0][0]), int(rows[0][1])
    path = server.dir / "data" / "mam_archive.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=WAIT)
    try:
        text, blob = conn.execute(
            "SELECT total(typeof(stanza) = 'text'), total(typeof(stanza) = 'blob') FROM archive"
        ).fetchone()
        return int(text), int(blob)
    finally:
        conn.close()


def reconfigure(server, **options):
    server.options.update(options)
    server.cfg.write_text(server.render(PLUGIN_PATH))
    server.restart()


def body(i):
    # Long enough that compression always makes the row smaller, even before the
    # archive has enough messages for a dictionary.
    return f"message {i}: " + "the quick brown fox jumps over the lazy dog; " * 6


async def test_text_rows_are_compressed_in_the_background_and_read_back_unchanged(
        prosody_factory, connect):
    server = prosody_factory("compress", options={"archive_compression": False})
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    await send_and_flush(alice, *[chat_xml(bob.bare, body(i)) for i in range(20)])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body(19))
    before = [(r.id, r.stamp, r.body) for r in await mam_all(bob)]
    assert [x[2] for x in before] == [body(i) for i in range(20)]
    assert stored_forms(server) == (40, 0)  # both parties' archives, as text
    await alice.disconnect()
    await bob.disconnect()

    reconfigure(server, archive_compression=True)
    await wait_log(server, "Compressed 40 stored messages")
    assert stored_forms(server) == (0, 40)
    bob = await connect(server, b)
    assert [(r.id, r.stamp, r.body) for r in await mam_all(bob)] == before

    # New messages go in compressed.
    alice = await connect(server, a)
    await send_and_flush(alice, chat_xml(bob.bare, body(20)))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body(20))
    deadline = time.monotonic() + WAIT
    while stored_forms(server) != (0, 42):
        assert time.monotonic() < deadline, stored_forms(server)
        await asyncio.sleep(0.05)
    await alice.disconnect()
    await bob.disconnect()

    # Off again: new rows are text, the compressed ones still read back.
    reconfigure(server, archive_compression=False)
    alice, bob = await connect(server, a), await connect(server, b)
    await send_and_flush(alice, chat_xml(bob.bare, body(21)))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body(21))
    assert [r.body for r in await mam_all(bob)] == [body(i) for i in range(22)]
    deadline = time.monotonic() + WAIT
    while stored_forms(server) != (2, 42):
        assert time.monotonic() < deadline, stored_forms(server)
        await asyncio.sleep(0.05)
