"""Query results reach every kind of session: those whose outgoing stanzas pass
through filters (stream management, websocket framing, CSI) get stanza objects the
filters can inspect and queue; sessions with an outgoing-bytes filter get one stanza
per send; the others get the same XML, serialised off the loop, in one send."""

import asyncio
import pathlib

import pytest

from conftest import chat_xml, log_lines, mam_all, send_and_flush, token

import prosody_config  # noqa: E402  (conftest puts prosody-test-env on sys.path)

PROBE_DIR = pathlib.Path(__file__).resolve().parent / "plugins"
N = 30


@pytest.fixture(scope="module")
def filter_server(prosody_factory):
    return prosody_factory(
        "filters",
        {
            "plugin_paths": [str(PROBE_DIR)],
            "modules_enabled": prosody_config.MODULES + ["smacks", "mam_filter_probe"],
        },
        users=8,
    )


async def archive_of(server, connect, n=N):
    """alice sends bob n chats; returns (alice, bob's username, bodies)."""
    a, b = server.take_users(2)
    alice = await connect(server, a)
    bodies = [f"{i:02d}-{token()}" for i in range(n)]
    await send_and_flush(alice, *[chat_xml(f"{b}@{server.host}", body) for body in bodies])
    return alice, b, bodies


def as_seen(results):
    return [(r.body, r.id) for r in results]


async def query_both(server, connect, resource):
    """bob's archive queried from an unfiltered session and from `resource`: both
    see every message, in order, with the same ids. Returns (plain, other, results)."""
    _, b, bodies = await archive_of(server, connect)
    plain = await connect(server, b, resource="plain")
    other = await connect(server, b, resource=resource)
    seen_plain = await mam_all(plain, page=50)
    seen_other = await mam_all(other, page=50)
    assert [r.body for r in seen_plain] == bodies
    assert as_seen(seen_other) == as_seen(seen_plain)
    return plain, other, seen_other


async def test_a_filtered_session_gets_stanza_objects_and_the_same_results(filter_server, connect):
    server = filter_server
    plain, filtered, seen_filtered = await query_both(server, connect, "filtered")
    # The filter was handed every result, as a stanza object, never as a string.
    lines = log_lines(server, "probe: filter saw result")
    ids = [line.split("saw result ")[1].split(" ")[0] for line in lines if filtered.full in line]
    assert ids == [r.id for r in seen_filtered]
    assert not log_lines(server, "probe: filter saw a string")
    # The unfiltered session's results were not seen by any filter.
    assert not [line for line in lines if plain.full in line]


async def test_a_bytes_filter_sees_one_stanza_per_send(filter_server, connect):
    server = filter_server
    _, bytes_, _ = await query_both(server, connect, "bytes")
    lines = [line for line in log_lines(server, "probe: bytes filter saw") if bytes_.full in line]
    assert len(lines) == N + 1, lines  # every result, then the iq with the fin
    assert all("saw 1 results and 0 fins" in line for line in lines[:-1]), lines
    assert "saw 0 results and 1 fins" in lines[-1]


async def test_stream_management_counts_every_result(filter_server, connect):
    """With XEP-0198 on, every result is a counted, queued stanza: the client's acks
    match the server's count, so the session stays up, and a result not yet acked
    would be resent on resumption."""
    server = filter_server
    _, b, bodies = await archive_of(server, connect)
    client = await connect(server, b, resource="sm", presence=False)
    xmpp = client.xmpp
    xmpp.register_plugin("xep_0198")
    sm = xmpp.plugin["xep_0198"]
    # Enable stream management on the bound session, then query.
    enabled = asyncio.get_running_loop().create_future()
    xmpp.add_event_handler("sm_enabled", lambda _e: enabled.done() or enabled.set_result(True))
    client.send("<enable xmlns='urn:xmpp:sm:3'/>")
    await asyncio.wait_for(enabled, 10)
    handled_before = sm.handled
    results = await mam_all(client, page=50)
    assert [r.body for r in results] == bodies
    # Ask the server for its count: <r/> -> <a h=/> is answered by the server; then
    # let the server ask us (it does after unacked stanzas) and check it stays happy.
    client.send("<r xmlns='urn:xmpp:sm:3'/>")
    await client.roundtrip()
    await asyncio.sleep(0.5)
    await client.roundtrip()
    assert sm.handled - handled_before >= N + 1  # every result and the iq reply
    assert not log_lines(server, "acknowledged more stanzas"), server.log_tail()
