"""How archiving interacts with offline delivery (mod_offline on and off)."""

import pytest

from conftest import NS_CLIENT, chat_xml, mam_all, mam_query, q, send_and_flush


def errors(client):
    return [m for m in client.messages if m.get("type") == "error"]


@pytest.fixture(scope="module")
def no_offline_server(prosody_factory):
    return prosody_factory("no-offline", {"modules_disabled": ["offline"]}, users=6)


async def test_without_mod_offline_an_archived_message_to_an_offline_user_is_not_bounced(no_offline_server, connect):
    a, b = no_offline_server.take_users(2)
    alice = await connect(no_offline_server, a)
    await send_and_flush(alice, chat_xml(f"{b}@localhost", "while-away", id_="away"))
    await alice.roundtrip()
    assert errors(alice) == []
    bob = await connect(no_offline_server, b, presence=False)
    assert [r.message.get("id") for r in await mam_all(bob)] == ["away"]


async def test_without_mod_offline_an_unarchived_message_to_an_offline_user_is_bounced(no_offline_server, connect):
    # The control for the test above: the bounce is real when nothing archived the message.
    a, b = no_offline_server.take_users(2)
    alice = await connect(no_offline_server, a)
    await send_and_flush(alice, chat_xml(f"{b}@localhost", "not-kept", id_="nostore",
                                         extra="<no-store xmlns='urn:xmpp:hints'/>"))
    bounce = await alice.wait_for_message(lambda m: m.get("type") == "error")
    assert bounce.get("id") == "nostore"


async def test_a_session_that_queried_mam_before_presence_gets_no_offline_messages(server, connect):
    a, b, c = server.take_users(3)
    alice = await connect(server, a)
    for user in (b, c):
        await send_and_flush(alice, chat_xml(f"{user}@localhost", f"offline-for-{user}"))
    bob = await connect(server, b, presence=False)
    results, _ = await mam_query(bob)
    assert [r.body for r in results] == [f"offline-for-{b}"]
    await send_and_flush(bob, "<presence/>")
    await bob.roundtrip()
    assert bob.delivered(f"offline-for-{b}") == []

    carol = await connect(server, c, presence=False)
    await send_and_flush(carol, "<presence/>")
    delivered = await carol.wait_for_message(
        lambda m: m.findtext(q(NS_CLIENT, "body")) == f"offline-for-{c}")
    assert delivered.get("from") == alice.full
