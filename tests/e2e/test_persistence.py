"""What survives a Prosody restart (stop + start on the same data dir)."""

import pytest

from conftest import NS_CLIENT, chat_xml, get_prefs, mam_all, q, send_and_flush, set_prefs


@pytest.fixture(scope="module")
def restart_server(prosody_factory):
    return prosody_factory("restart", users=4)


async def test_messages_and_preferences_survive_a_restart_with_the_same_ids(restart_server, connect):
    a, b = restart_server.take_users(2)
    alice, bob = await connect(restart_server, a), await connect(restart_server, b)
    await set_prefs(bob, "roster", always=[alice.bare], never=["spam@example.org"])
    await send_and_flush(alice, *[chat_xml(bob.bare, f"m{i}") for i in range(3)])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "m2")
    before = [(r.id, r.stamp, r.body) for r in await mam_all(bob)]
    assert [body for _, _, body in before] == ["m0", "m1", "m2"]
    await alice.disconnect()
    await bob.disconnect()

    restart_server.restart()

    bob = await connect(restart_server, b)
    assert [(r.id, r.stamp, r.body) for r in await mam_all(bob)] == before
    assert await get_prefs(bob) == ("roster", [alice.bare], ["spam@example.org"])
    alice = await connect(restart_server, a)
    await send_and_flush(alice, chat_xml(bob.bare, "m3"))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "m3")
    after = await mam_all(bob)
    assert [r.body for r in after] == ["m0", "m1", "m2", "m3"]
    assert len({r.id for r in after}) == 4
