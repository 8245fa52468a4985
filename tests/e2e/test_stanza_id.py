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


NS_CARBONS = "urn:xmpp:carbons:2"


async def test_the_senders_carbon_carries_the_senders_stanza_id_and_the_recipient_only_its_own(server, connect):
    """The sender's stanza-id exists for the sender's carbons (XEP-0313 §5.1.2): the
    copy mod_carbons sends to the sender's other resource names the sender's archive
    id; the message routed to the recipient carries only the recipient's, and the
    sender's own session gets nothing back. Checked over many messages, since the
    sender's id is put on and taken off the very stanza that is then routed."""
    a, b = server.take_users(2)
    alice = await connect(server, a, resource="phone")
    alice_desk = await connect(server, a, resource="desk")
    bob = await connect(server, b)
    await alice_desk.iq("set", f"<enable xmlns='{NS_CARBONS}'/>")
    bodies = [f"c{i}-{token()}" for i in range(20)]
    await send_and_flush(alice, *[chat_xml(bob.bare, body) for body in bodies])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == bodies[-1])

    def carbon_of(body):
        def match(m):
            sent = m.find(q(NS_CARBONS, "sent"))
            inner = sent is not None and sent.find(f"{{urn:xmpp:forward:0}}forwarded/{{{NS_CLIENT}}}message")
            return inner is not None and inner.findtext(q(NS_CLIENT, "body")) == body
        return match

    alice_archive = {r.body: r.id for r in await mam_all(alice)}
    bob_archive = {r.body: r.id for r in await mam_all(bob)}
    for body in bodies:
        carbon = await alice_desk.wait_for_message(carbon_of(body))
        inner = carbon.find(f"{{{NS_CARBONS}}}sent/{{urn:xmpp:forward:0}}forwarded/{{{NS_CLIENT}}}message")
        assert [(s.get("by"), s.get("id")) for s in stanza_ids(inner)] == [(alice.bare, alice_archive[body])]
        delivered = [m for m in bob.messages if m.findtext(q(NS_CLIENT, "body")) == body]
        assert len(delivered) == 1
        assert [(s.get("by"), s.get("id")) for s in stanza_ids(delivered[0])] == [(bob.bare, bob_archive[body])]
    assert not [m for m in alice.messages if m.findtext(q(NS_CLIENT, "body")) in bodies]
