"""Archiving preferences (XEP-0313 §6.2) and the server-wide policy options."""

import pytest

from conftest import (
    NS_CLIENT, NS_ROSTER, chat_xml, get_prefs, mam_all, mam_query, q, send_and_flush,
    set_prefs, token,
)


async def bodies(client):
    return [r.body for r in await mam_all(client)]


async def deliver(sender, recipient, body):
    await send_and_flush(sender, chat_xml(recipient.bare, body))
    await recipient.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body)


async def test_default_preferences_are_always_with_empty_lists(server, connect):
    (u,) = server.take_users(1)
    client = await connect(server, u)
    assert await get_prefs(client) == ("always", [], [])


async def test_preferences_set_are_read_back_exactly(server, connect):
    (u,) = server.take_users(1)
    client = await connect(server, u)
    always = ["romeo@montague.lit", "friar@capulet.lit"]
    never = ["montague@montague.lit"]
    expected = ("roster", sorted(always), sorted(never))
    assert await set_prefs(client, "roster", always, never) == expected
    assert await get_prefs(client) == expected
    assert await set_prefs(client, "never") == ("never", [], [])
    assert await get_prefs(client) == ("never", [], [])


async def test_messages_with_a_never_jid_are_not_archived(server, connect):
    a, b, c = server.take_users(3)
    alice, bob, carol = await connect(server, a), await connect(server, b), await connect(server, c)
    await set_prefs(alice, "always", never=[carol.bare])
    await deliver(carol, alice, "from-carol")
    await deliver(bob, alice, "from-bob")
    await deliver(alice, carol, "to-carol")
    assert await bodies(alice) == ["from-bob"]
    assert await bodies(carol) == ["from-carol", "to-carol"]  # carol's own prefs archive


async def test_messages_with_an_always_jid_are_archived_under_default_never(server, connect):
    a, b, c = server.take_users(3)
    alice, bob, carol = await connect(server, a), await connect(server, b), await connect(server, c)
    await set_prefs(alice, "never", always=[bob.bare])
    await deliver(carol, alice, "from-carol")
    await deliver(bob, alice, "from-bob")
    await deliver(alice, carol, "to-carol")
    await deliver(alice, bob, "to-bob")
    assert await bodies(alice) == ["from-bob", "to-bob"]


async def test_default_roster_archives_only_roster_contacts(server, connect):
    a, b, c = server.take_users(3)
    alice, bob, carol = await connect(server, a), await connect(server, b), await connect(server, c)
    await alice.iq("set", f"<query xmlns='{NS_ROSTER}'><item jid='{bob.bare}'/></query>")
    await set_prefs(alice, "roster")
    await deliver(carol, alice, "from-carol")
    await deliver(bob, alice, "from-bob")
    await deliver(alice, carol, "to-carol")
    assert await bodies(alice) == ["from-bob"]


@pytest.fixture(scope="module")
def policy_off_server(prosody_factory):
    return prosody_factory("policy-off", {"default_archive_policy": False}, users=4)


async def test_default_archive_policy_false_archives_nothing_by_default(policy_off_server, connect):
    a, b = policy_off_server.take_users(2)
    alice, bob = await connect(policy_off_server, a), await connect(policy_off_server, b)
    assert await get_prefs(alice) == ("never", [], [])
    await deliver(alice, bob, "m1")
    assert await bodies(alice) == []
    assert await bodies(bob) == []
    await set_prefs(bob, "always")
    await deliver(alice, bob, "m2")
    assert await bodies(bob) == ["m2"]
    assert await bodies(alice) == []


@pytest.fixture(scope="module")
def smart_server(prosody_factory):
    return prosody_factory("smart", {"mam_smart_enable": True}, users=4)


async def test_mam_smart_enable_archives_nothing_until_the_user_has_used_mam(smart_server, connect):
    a, b = smart_server.take_users(2)
    alice, bob = await connect(smart_server, a), await connect(smart_server, b)
    await deliver(bob, alice, "before")
    results, fin = await mam_query(alice)  # first use of MAM enables archiving
    assert results == [] and fin.complete
    await deliver(bob, alice, "after")
    assert await bodies(alice) == ["after"]
    # bob has not used MAM yet, so his side of the chat was not archived; this
    # query is his first use, which enables archiving for him from now on.
    assert await bodies(bob) == []
    await deliver(bob, alice, "after-bob-used-mam")
    assert await bodies(bob) == ["after-bob-used-mam"]
