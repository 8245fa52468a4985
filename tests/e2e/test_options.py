"""Module options: validation at load, per-user item limit."""

import asyncio
import time

import pytest

from conftest import (
    NS_CLIENT, NS_DISCO_INFO, NS_MAM, StanzaError, chat_xml, mam_all, mam_query, q,
    send_and_flush,
)


@pytest.fixture(scope="module")
def bad_expiry_server(prosody_factory):
    return prosody_factory("bad-expiry", {"archive_expires_after": "soon"}, users=2)


@pytest.mark.native_only
async def test_an_invalid_archive_expires_after_fails_the_module_load_with_a_log_line(bad_expiry_server, connect):
    # The log file is written asynchronously to the port opening: poll, bounded.
    deadline = time.monotonic() + 10
    while True:
        log = bad_expiry_server.log_text()
        lines = [line for line in log.splitlines() if "archive_expires_after" in line]
        if lines or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert lines, "no log line names archive_expires_after"
    assert any("error" in line.lower() for line in lines), lines
    (u,) = bad_expiry_server.take_users(1)
    client = await connect(bad_expiry_server, u)
    reply = await client.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=client.bare)
    features = [f.get("var") for f in reply.iter(q(NS_DISCO_INFO, "feature"))]
    assert NS_MAM not in features
    with pytest.raises(StanzaError) as info:
        await mam_query(client)
    assert info.value.condition in ("service-unavailable", "feature-not-implemented")


@pytest.fixture(scope="module")
def limit_server(prosody_factory):
    return prosody_factory("limit5", {"storage_archive_item_limit": 5}, users=2)


# Not native_only: stock with internal storage passes too (over quota it truncates to
# floor(0.99 * limit) = 4 and appends, which for 5 is a sliding window).
async def test_storage_archive_item_limit_keeps_only_the_newest_messages(limit_server, connect):
    a, b = limit_server.take_users(2)
    alice, bob = await connect(limit_server, a), await connect(limit_server, b)
    bodies = [f"m{i}" for i in range(8)]
    await send_and_flush(alice, *[chat_xml(bob.bare, body) for body in bodies])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "m7")
    for client in (alice, bob):
        results = await mam_all(client)
        assert [r.body for r in results] == bodies[3:]
        _, fin = await mam_query(client, rsm={"max": 0})
        assert fin.count in (None, 5)
