"""Isolation (issue 5, item 4): a user can never read, count, page into or change
another user's archive or preferences."""

import pytest

from conftest import (
    NS_CLIENT, NS_MAM, StanzaError, build_query, chat_xml, get_prefs, mam_all, mam_query, q,
    send_and_flush, set_prefs, token,
)


@pytest.fixture(scope="module")
def isolated(prosody_factory):
    return prosody_factory("isolation")


async def three(server, connect):
    """carol chats with bob (alice is no party) and with alice; returns
    (alice, bob, bob_results, alice_body)."""
    a, b, c = server.take_users(3)
    alice, bob, carol = (await connect(server, a), await connect(server, b),
                         await connect(server, c))
    bob_bodies = [f"bob-{i}-{token()}" for i in range(3)]
    alice_body = f"alice-{token()}"
    await send_and_flush(carol, *[chat_xml(bob.bare, body) for body in bob_bodies],
                         chat_xml(alice.bare, alice_body))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == bob_bodies[-1])
    await alice.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == alice_body)
    bob_results = await mam_all(bob)
    assert [r.body for r in bob_results] == bob_bodies
    return alice, bob, bob_results, alice_body


async def test_querying_another_accounts_archive_is_refused(isolated, connect):
    alice, bob, bob_results, _ = await three(isolated, connect)
    already = len(alice.messages)
    queryid = token()
    with pytest.raises(StanzaError) as info:
        await alice.iq("set", build_query(queryid), to=bob.bare)
    # As stock: nothing on bob's account handles a MAM query from someone else.
    assert info.value.condition == "service-unavailable", info.value
    await alice.roundtrip()
    leaked = [m for m in alice.messages[already:] if m.find(q(NS_MAM, "result")) is not None]
    assert leaked == []
    for type_, payload in (("get", f"<query xmlns='{NS_MAM}'/>"),
                           ("get", f"<metadata xmlns='{NS_MAM}'/>")):
        with pytest.raises(StanzaError) as info:
            await alice.iq(type_, payload, to=bob.bare)
        assert info.value.condition == "service-unavailable", info.value


@pytest.mark.native_only  # stock's internal store ignores some unknown bounds
async def test_another_users_ids_as_paging_bounds_are_item_not_found(isolated, connect):
    alice, bob, bob_results, alice_body = await three(isolated, connect)
    theirs = bob_results[1].id
    for kwargs in ({"after_id": theirs}, {"before_id": theirs},
                   {"rsm": {"after": theirs}}, {"rsm": {"before": theirs}}):
        with pytest.raises(StanzaError) as info:
            await mam_query(alice, **kwargs)
        assert info.value.condition == "item-not-found", (kwargs, info.value)
    # Alice's own archive is unaffected.
    assert [r.body for r in await mam_all(alice)] == [alice_body]


@pytest.mark.native_only  # stock 0.12's internal storage ignores `ids`
async def test_another_users_ids_in_the_ids_field_match_nothing_and_count_zero(
        isolated, connect):
    alice, bob, bob_results, alice_body = await three(isolated, connect)
    results, fin = await mam_query(alice, ids=[r.id for r in bob_results])
    assert results == []
    assert fin.count == 0
    assert fin.complete


async def test_prefs_addressed_to_another_user_are_refused_and_change_nothing(
        isolated, connect):
    alice, bob, _, _ = await three(isolated, connect)
    before = await get_prefs(bob)
    payload = (f"<prefs xmlns='{NS_MAM}' default='never'>"
               f"<always/><never><jid>{alice.bare}</jid></never></prefs>")
    for type_ in ("set", "get"):
        with pytest.raises(StanzaError) as info:
            await alice.iq(type_, payload if type_ == "set" else f"<prefs xmlns='{NS_MAM}'/>",
                           to=bob.bare)
        assert info.value.condition == "service-unavailable", info.value
    assert await get_prefs(bob) == before
    # And alice's own prefs are hers alone.
    await set_prefs(alice, "never", never=[bob.bare])
    assert await get_prefs(bob) == before
