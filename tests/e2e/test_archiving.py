"""Which messages get archived, in whose archive, and what is stored (XEP-0313 §7)."""

import pytest

from conftest import (
    NS_CLIENT, chat_xml, log_lines, mam_all, q, send_and_flush, token,
)

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


async def pair(server, connect):
    a, b = server.take_users(2)
    return await connect(server, a), await connect(server, b)


def ids_of(results):
    return [r.message.get("id") for r in results]


async def test_a_chat_with_body_is_archived_by_both_sender_and_recipient(server, connect):
    alice, bob = await pair(server, connect)
    body = token()
    await send_and_flush(alice, chat_xml(bob.bare, body, id_="m1"))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body)

    sent = await mam_all(alice)
    received = await mam_all(bob)
    assert [r.body for r in sent] == [body]
    assert [r.body for r in received] == [body]
    assert sent[0].message.get("to") == bob.bare
    assert received[0].message.get("from") == alice.full
    assert sent[0].message.get("id") == received[0].message.get("id") == "m1"


async def test_headline_and_groupchat_messages_are_not_archived(server, connect):
    alice, bob = await pair(server, connect)
    control = token()
    await send_and_flush(
        alice,
        chat_xml(bob.bare, "headline", type_="headline"),
        chat_xml(bob.full, "groupchat", type_="groupchat"),
        chat_xml(bob.bare, control),
    )
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == control)
    assert [r.body for r in await mam_all(alice)] == [control]
    assert [r.body for r in await mam_all(bob)] == [control]


async def test_an_error_message_to_a_full_jid_is_archived_but_not_to_a_bare_jid(server, connect):
    alice, bob = await pair(server, connect)
    err = ("<error type='cancel'><service-unavailable "
           "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")
    control = token()
    await send_and_flush(
        alice,
        chat_xml(bob.full, "to-full", type_="error", extra=err, id_="err-full"),
        chat_xml(bob.bare, "to-bare", type_="error", extra=err, id_="err-bare"),
        chat_xml(bob.bare, control, id_="control"),
    )
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == control)
    assert ids_of(await mam_all(alice)) == ["err-full", "control"]
    assert ids_of(await mam_all(bob)) == ["err-full", "control"]


async def test_no_store_hints_skip_archiving_and_a_store_hint_keeps_a_bodyless_message(server, connect):
    alice, bob = await pair(server, connect)
    control = token()
    await send_and_flush(
        alice,
        chat_xml(bob.bare, "no-store", extra="<no-store xmlns='urn:xmpp:hints'/>", id_="h1"),
        chat_xml(bob.bare, "no-perm", extra="<no-permanent-store xmlns='urn:xmpp:hints'/>", id_="h2"),
        chat_xml(bob.bare, None, extra="<store xmlns='urn:xmpp:hints'/>", id_="h3"),
        chat_xml(bob.bare, control, id_="control"),
    )
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == control)
    assert ids_of(await mam_all(alice)) == ["h3", "control"]
    bob_archive = await mam_all(bob)
    assert ids_of(bob_archive) == ["h3", "control"]
    assert bob_archive[0].message.find("{urn:xmpp:hints}store") is not None


BODYLESS_KEPT = [
    ("subject", "<subject>Hello</subject>"),
    ("eme", "<encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/>"),
    ("receipt-request", "<request xmlns='urn:xmpp:receipts'/>"),
    ("receipt", "<received xmlns='urn:xmpp:receipts' id='r1'/>"),
    ("marker", "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>"),
    ("invite", "<x xmlns='jabber:x:conference' jid='room@conference.localhost'/>"),
    ("jingle", "<propose xmlns='urn:xmpp:jingle-message:0' id='j1'>"
               "<description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>"),
]


async def test_bodyless_messages_with_subject_eme_receipt_marker_invite_or_jingle_are_archived(server, connect):
    alice, bob = await pair(server, connect)
    stanzas = [chat_xml(bob.bare, None, extra=extra, id_=name) for name, extra in BODYLESS_KEPT]
    stanzas.append(chat_xml(bob.bare, None, extra="<x xmlns='urn:example:unknown'/>", id_="unknown"))
    control = token()
    stanzas.append(chat_xml(bob.bare, control, id_="control"))
    await send_and_flush(alice, *stanzas)
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == control)
    expected = [name for name, _ in BODYLESS_KEPT] + ["control"]
    assert ids_of(await mam_all(alice)) == expected
    assert ids_of(await mam_all(bob)) == expected


async def test_a_chat_state_only_message_is_not_archived_and_chat_states_are_stripped_from_stored_copies(server, connect):
    alice, bob = await pair(server, connect)
    await send_and_flush(
        alice,
        chat_xml(bob.bare, None, extra=f"<composing xmlns='{NS_CHATSTATES}'/>", id_="state"),
        chat_xml(bob.bare, "with-state", extra=f"<active xmlns='{NS_CHATSTATES}'/>", id_="body"),
    )
    delivered = await bob.wait_for_message(lambda m: m.get("id") == "body")
    assert delivered.find(f"{{{NS_CHATSTATES}}}active") is not None  # delivered unchanged
    for client in (alice, bob):
        archive = await mam_all(client)
        assert ids_of(archive) == ["body"]
        assert archive[0].body == "with-state"
        assert [c for c in archive[0].message if c.tag.startswith(f"{{{NS_CHATSTATES}}}")] == []
    # The debug log names the skipped message by its opening tag (built only when the
    # line is written).
    lines = [l for l in log_lines(server, "Not archiving stanza: <message") if "id='state'" in l]
    assert lines and all(f"to='{bob.bare}'" in l and "<composing" not in l for l in lines), lines


@pytest.fixture(scope="module")
def strip_server(prosody_factory):
    return prosody_factory("strip", {"dont_archive_namespaces": ["urn:example:strip"]}, users=4)


async def test_configured_dont_archive_namespaces_are_stripped_and_replace_the_default(strip_server, connect):
    alice, bob = await pair(strip_server, connect)
    await send_and_flush(
        alice,
        chat_xml(bob.bare, "x", id_="m1",
                 extra=f"<x xmlns='urn:example:strip'/><active xmlns='{NS_CHATSTATES}'/>"),
    )
    await bob.wait_for_message(lambda m: m.get("id") == "m1")
    for client in (alice, bob):
        archive = await mam_all(client)
        assert ids_of(archive) == ["m1"]
        stored = archive[0].message
        assert stored.find("{urn:example:strip}x") is None
        assert stored.find(f"{{{NS_CHATSTATES}}}active") is not None
