"""Removal from the archive: time-based expiry and account deletion."""

import asyncio
import time

import pytest

from conftest import (
    NS_CLIENT, NS_REGISTER, WAIT, chat_xml, mam_all, q, send_and_flush,
)


@pytest.fixture(scope="module")
def expiry_server(prosody_factory):
    return prosody_factory(
        "expiry", {"archive_expires_after": 2, "archive_cleanup_interval": 1}, users=2)


@pytest.mark.native_only
async def test_messages_older_than_archive_expires_after_disappear_and_newer_remain(expiry_server, connect):
    a, b = expiry_server.take_users(2)
    alice, bob = await connect(expiry_server, a), await connect(expiry_server, b)
    await send_and_flush(alice, chat_xml(bob.bare, "old"))
    assert [r.body for r in await mam_all(bob)] == ["old"]
    deadline = time.monotonic() + WAIT
    fresh = 0
    while time.monotonic() < deadline:
        # keep a message younger than the expiry age in the archive
        fresh += 1
        await send_and_flush(alice, chat_xml(bob.bare, f"new{fresh}"))
        current = [r.body for r in await mam_all(bob)]
        if "old" not in current:
            break
        await asyncio.sleep(0.25)
    current = [r.body for r in await mam_all(bob)]
    assert "old" not in current, "message did not expire within the bounded wait"
    assert current and current[-1] == f"new{fresh}"
    first = int(current[0][3:])
    assert current == [f"new{i}" for i in range(first, fresh + 1)], "holes in what remains"
    assert [r.body for r in await mam_all(alice)][-1] == f"new{fresh}"


async def test_a_deleted_and_re_registered_account_starts_with_an_empty_archive(server, connect):
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    await send_and_flush(alice, chat_xml(bob.bare, "before-delete"))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "before-delete")
    assert [r.body for r in await mam_all(bob)] == ["before-delete"]

    await bob.iq("set", f"<query xmlns='{NS_REGISTER}'><remove/></query>")
    await bob.disconnect()
    server.register(b)

    bob = await connect(server, b)
    assert await mam_all(bob) == []
    # The other side keeps its own copy.
    assert [r.body for r in await mam_all(alice)] == ["before-delete"]
