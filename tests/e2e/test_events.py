"""mod_mam's extension events, used by other modules: archive-should-store (veto)
and archive-message-added (notification with the stored copy and its id)."""

import asyncio
import pathlib
import re
import time

import pytest

from conftest import chat_xml, mam_all, send_and_flush

import prosody_config  # noqa: E402  (conftest puts prosody-test-env on sys.path)

PROBE_DIR = pathlib.Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="module")
def probe_server(prosody_factory):
    return prosody_factory(
        "probe",
        {
            "plugin_paths": [str(PROBE_DIR)],
            "modules_enabled": prosody_config.MODULES + ["mam_hooks_probe"],
        },
        users=4,
    )


async def probe_lines(server, predicate):
    """Log lines of the probe matching predicate; bounded poll (the log is async)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [l for l in server.log_text().splitlines() if "probe: archive-message-added" in l]
        hits = [l for l in lines if predicate(l)]
        if hits or time.monotonic() > deadline:
            return hits
        await asyncio.sleep(0.1)


async def test_another_module_can_veto_archiving_through_archive_should_store(probe_server, connect):
    a, b = probe_server.take_users(2)
    alice, bob = await connect(probe_server, a), await connect(probe_server, b)
    await send_and_flush(alice, chat_xml(bob.bare, "keep-me"), chat_xml(bob.bare, "veto-me"))
    await bob.wait_for_message(lambda m: m.findtext("{jabber:client}body") == "veto-me")
    for client in (alice, bob):
        assert [r.body for r in await mam_all(client)] == ["keep-me"]


async def test_archive_message_added_carries_the_stored_copy_and_its_id(probe_server, connect):
    a, b = probe_server.take_users(2)
    alice, bob = await connect(probe_server, a), await connect(probe_server, b)
    extra = "<active xmlns='http://jabber.org/protocol/chatstates'/>"
    await send_and_flush(alice, chat_xml(bob.bare, "announce-me", extra=extra))
    await bob.wait_for_message(lambda m: m.findtext("{jabber:client}body") == "announce-me")
    (bob_result,) = await mam_all(bob)
    (alice_result,) = await mam_all(alice)
    hits = await probe_lines(probe_server, lambda l: "body=announce-me" in l)
    seen = {re.search(r"for_user=(\S+) id=(\S+)", l).groups() for l in hits}
    assert seen == {(a, alice_result.id), (b, bob_result.id)}
    # The stored copy is announced: chat states stripped (dont_archive_namespaces).
    assert all("chatstate=false" in l for l in hits)
    # Logged in order: the vetoed message of the other test would be there by now.
    assert "body=veto-me" not in probe_server.log_text()
