"""XEP-0359 Unique and Stable Stanza IDs, as added by the archive (XEP-0313 §5.1)."""

import pytest

from conftest import NS_CLIENT, chat_xml, mam_all, q, send_and_flush, stanza_ids, token


async def test_the_delivered_copy_carries_the_recipients_stanza_id_equal_to_the_archive_id(server, connect):
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    body = token()
    await send_and_flush(alice, chat_xml(bob.bare, body))
    delivered = await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body)
    sids = stanza_ids(delivered)
    assert len(sids) == 1, "exactly one stanza-id, by the recipient (the sender's is stripped)"
    assert sids[0].get("by") == bob.bare
    assert sids[0].get("id")
    archive = await mam_all(bob)
    assert [(r.id, r.body) for r in archive] == [(sids[0].get("id"), body)]


@pytest.mark.native_only
async def test_a_forged_stanza_id_claiming_the_recipients_archive_is_neither_delivered_nor_stored(server, connect):
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    forged = f"<stanza-id xmlns='urn:xmpp:sid:0' by='{bob.bare}' id='forged'/>"
    await send_and_flush(alice, chat_xml(bob.bare, "spoof", extra=forged, id_="spoof"))
    delivered = await bob.wait_for_message(lambda m: m.get("id") == "spoof")
    mine = stanza_ids(delivered, by=bob.bare)
    assert len(mine) == 1
    assert mine[0].get("id") != "forged"
    archive = await mam_all(bob)
    assert [r.id for r in archive] == [mine[0].get("id")]
    assert [s.get("id") for s in stanza_ids(archive[0].message)] == []
    for r in await mam_all(alice):
        assert "forged" not in [s.get("id") for s in stanza_ids(r.message)]


async def test_stanza_ids_are_unique_across_many_messages_and_match_the_archive_in_order(server, connect):
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    bodies = [f"n{i}-{token()}" for i in range(30)]
    await send_and_flush(alice, *[chat_xml(bob.bare, body) for body in bodies])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == bodies[-1])
    delivered = [bob.delivered(body)[0] for body in bodies]
    ids = [stanza_ids(m, by=bob.bare)[0].get("id") for m in delivered]
    assert len(set(ids)) == len(ids)
    archive = await mam_all(bob)
    assert [r.id for r in archive] == ids
    assert [r.body for r in archive] == bodies
    sent_ids = [r.id for r in await mam_all(alice)]
    assert len(set(sent_ids)) == 30
