"""Hostile input through a real client (issue 5, item 3): every query parameter and
stanza shape a client controls gets the XEP-0313 error or a correct result; the server
keeps answering, and a normal query works right after."""

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from conftest import (
    HOST, NS_CLIENT, NS_DATA, NS_MAM, NS_PING, NS_RSM, NS_STANZAS, WAIT, StanzaError,
    build_query, chat_xml, mam_all, mam_query, q, send_and_flush, token,
)


@pytest.fixture(scope="module")
def hostile(prosody_factory):
    return prosody_factory("hostile")


async def pair(server, connect):
    """alice sends bob one chat; returns (alice, bob, body). Queries run on bob."""
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    body = f"hello-{token()}"
    await send_and_flush(alice, chat_xml(bob.bare, body))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == body)
    return alice, bob, body


async def still_healthy(client, body):
    """The server answers a ping and a plain archive query still finds `body`."""
    await client.iq("get", f"<ping xmlns='{NS_PING}'/>", to=HOST)
    results, fin = await mam_query(client, rsm={"max": 50})
    assert body in [r.body for r in results], "a normal query after a hostile one"


async def refused(client, payload, condition, type_=None):
    """Sends an iq-set; asserts the error condition (and type); returns the error."""
    with pytest.raises(StanzaError) as info:
        await client.iq("set", payload)
    err = info.value
    assert err.condition == condition, err
    if type_:
        assert err.type == type_, err
    return err


def query_xml(inner="", queryid=None):
    qid = f" queryid='{queryid}'" if queryid else ""
    return f"<query xmlns='{NS_MAM}'{qid}>{inner}</query>"


def form(*fields, form_type=NS_MAM):
    ft = f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    return f"<x xmlns='{NS_DATA}' type='submit'>{ft}{''.join(fields)}</x>"


def field(var, *values):
    vals = "".join(f"<value>{v}</value>" for v in values)
    return f"<field var='{var}'>{vals}</field>"


def rsm(inner):
    return f"<set xmlns='{NS_RSM}'>{inner}</set>"


class _IqById(MatcherBase):
    def __init__(self, id_):
        super().__init__(id_)

    def match(self, xml):
        return xml.xml.tag == q(NS_CLIENT, "iq") and xml.xml.get("id") == self._criteria


async def raw_iq_error(client, payload):
    """Sends an iq-set as raw XML and returns (type, condition) of its error reply.

    For conditions slixmpp's Iq cannot represent (it predates `policy-violation`)."""
    id_ = token()
    replies = []
    client.xmpp.register_handler(
        Callback(f"raw-{id_}", _IqById(id_), lambda s: replies.append(s.xml)))
    try:
        client.send(f"<iq type='set' id='{id_}'>{payload}</iq>")
        deadline = time.monotonic() + WAIT
        while not replies:
            assert time.monotonic() < deadline, "no reply to the raw iq"
            await asyncio.sleep(0.02)
    finally:
        client.xmpp.remove_handler(f"raw-{id_}")
    reply = replies[0]
    assert reply.get("type") == "error", ET.tostring(reply)
    err = reply.find(q(NS_CLIENT, "error"))
    conditions = [c.tag.split("}", 1)[1] for c in err
                  if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text")]
    return err.get("type"), conditions


# -- RSM max -------------------------------------------------------------------

@pytest.mark.native_only
async def test_negative_or_non_numeric_max_is_bad_request(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    for max_ in ("-1", "abc", "1.5", "", "0x10"):
        await refused(bob, query_xml(rsm(f"<max>{max_}</max>")), "bad-request", "modify")
        await still_healthy(bob, body)


async def test_a_huge_max_is_capped_to_the_server_limit(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    for max_ in ("99999999999999999999", "18446744073709551616", "2147483648"):
        results, fin = await mam_query(bob, rsm={"max": max_})
        assert [r.body for r in results] == [body]
        assert fin.complete
    await still_healthy(bob, body)


async def test_rsm_set_with_garbage_children_is_ignored(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    reply = await bob.iq("set", query_xml(rsm("<junk>1</junk><max>5</max><x:y xmlns:x='urn:x'/>")))
    assert reply.find(q(NS_MAM, "fin")) is not None
    await still_healthy(bob, body)


@pytest.mark.native_only  # stock looks the empty id up: item-not-found
async def test_an_empty_rsm_after_is_bad_request(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    await refused(bob, query_xml(rsm("<after/>")), "bad-request")
    await still_healthy(bob, body)


# -- ids -----------------------------------------------------------------------

@pytest.mark.native_only
async def test_five_thousand_ids_are_policy_violation_and_the_server_keeps_answering(
        hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    ids = [f"id-{i:05d}" for i in range(5000)]
    payload = ET.tostring(build_query(token(), {"ids": ids}), encoding="unicode")
    assert len(payload) < 256 * 1024  # Prosody's c2s_stanza_size_limit
    assert await raw_iq_error(bob, payload) == ("modify", ["policy-violation"])
    await still_healthy(bob, body)


# -- with, dates, fields ---------------------------------------------------------

async def test_invalid_with_jids_are_bad_request(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    for jid in ("@@", "a b@localhost", "@" + HOST, "x" * 1100 + "@" + HOST,
                f"{alice.bare}/", "a@b@c"):
        await refused(bob, query_xml(form(field("with", jid))), "bad-request", "modify")
        await still_healthy(bob, body)


async def test_confusable_and_normalised_with_jids(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    # Cyrillic 'а' for Latin 'a': a different (valid) JID, so nothing matches.
    confusable = "\u0430" + alice.bare[1:]
    results, _ = await mam_query(bob, with_=confusable)
    assert results == []
    # Upper case is the same JID after nodeprep.
    results, _ = await mam_query(bob, with_=alice.bare.upper())
    assert [r.body for r in results] == [body]
    await still_healthy(bob, body)


@pytest.mark.native_only  # stock reads some of these leniently
async def test_invalid_dates_are_bad_request(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    for var, date in (("start", "yesterday"), ("end", "2010-13-45T00:00:00Z"),
                      ("start", "2010-06-07"), ("end", "2010-06-07T25:00:00Z"),
                      ("start", "9" * 40)):
        await refused(bob, query_xml(form(field(var, date))), "bad-request", "modify")
        await still_healthy(bob, body)


async def test_extreme_but_valid_dates_give_a_correct_result(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    results, _ = await mam_query(bob, start="0001-01-01T00:00:00Z", end="9999-12-31T23:59:59Z")
    assert [r.body for r in results] == [body]
    results, _ = await mam_query(bob, start="9999-12-31T23:59:59Z")
    assert results == []


@pytest.mark.native_only
async def test_duplicated_fields_and_unknown_fields_get_their_xep_0313_errors(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    dup = form(field("with", alice.bare), field("with", bob.bare))
    await refused(bob, query_xml(dup), "bad-request", "modify")
    two_values = form(field("start", "2010-06-07T00:00:00Z", "2011-06-07T00:00:00Z"))
    await refused(bob, query_xml(two_values), "bad-request")
    await refused(bob, query_xml(form(field("full-text-search", "x"))),
                  "feature-not-implemented", "cancel")
    await refused(bob, query_xml(form(form_type="urn:xmpp:mam:1")), "bad-request")
    await still_healthy(bob, body)


@pytest.mark.native_only  # stock: an empty `with` is "Invalid JID"
async def test_empty_values_and_multiple_forms_give_a_correct_result(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    # Empty values mean "not given"; a second form is not read.
    empty = form(field("with", ""), field("start"), field("after-id", ""))
    second = form(field("with", "nobody@" + HOST))
    reply = await bob.iq("set", query_xml(empty + second, queryid="two-forms"))
    assert reply.find(q(NS_MAM, "fin")) is not None
    got = [m for m in bob.messages
           if (r := m.find(q(NS_MAM, "result"))) is not None and r.get("queryid") == "two-forms"]
    assert [m.find(f".//{q(NS_CLIENT, 'body')}").text for m in got] == [body]
    await still_healthy(bob, body)


async def test_a_queryid_with_quotes_ampersands_and_brackets_is_echoed_exactly(hostile, connect):
    alice, bob, body = await pair(hostile, connect)
    queryid = "q'\"&<>\u00e9\U0001F600 \t"
    element = build_query(queryid)
    await bob.iq("set", element)
    results = [m.find(q(NS_MAM, "result")) for m in bob.messages]
    echoed = [r.get("queryid") for r in results if r is not None]
    # The tab is an attribute value's whitespace: any XML parser reads it as a space.
    assert queryid.replace("\t", " ") in echoed


# -- stanza shapes ----------------------------------------------------------------

async def test_a_200_kb_body_is_archived_and_returned_intact(hostile, connect):
    alice, bob, _ = await pair(hostile, connect)
    body = ("0123456789abcdef" * 12800)[:200 * 1024]
    await send_and_flush(alice, chat_xml(bob.bare, body))
    results = await mam_all(bob, page=5)
    assert [len(r.body) for r in results][-1] == len(body)
    assert results[-1].body == body


@pytest.mark.native_only  # stock 0.12 (internal storage) returns no such result
async def test_a_message_nested_200_levels_is_archived_and_returned_intact(hostile, connect):
    alice, bob, _ = await pair(hostile, connect)
    marker = token()
    depth = 200
    nested = "<n xmlns='urn:test:nest'>" * depth + marker + "</n>" * depth
    await send_and_flush(alice, chat_xml(bob.bare, marker, extra=nested))
    results = await mam_all(bob)
    (hit,) = [r for r in results if r.body == marker]
    el, levels = hit.message, 0
    while (child := el.find("{urn:test:nest}n")) is not None:
        el, levels = child, levels + 1
    assert levels == depth and el.text == marker


@pytest.mark.native_only  # stock 0.12 drops such a message too
async def test_a_message_nested_deeper_than_the_archive_limit_is_still_delivered(
        hostile, connect):
    # Prosody limits a stanza's size (256 KB), not its depth; we archive up to 256
    # levels. A deeper message is not archived, but it is delivered (it used to raise
    # in archive-should-store, and Prosody then dropped it).
    alice, bob, body = await pair(hostile, connect)
    marker = token()
    depth = 5000
    nested = "<n xmlns='urn:test:nest'>" * depth + "</n>" * depth
    await send_and_flush(alice, chat_xml(bob.bare, marker, extra=nested))
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == marker)
    await still_healthy(bob, body)
    await still_healthy(alice, body)


ODD_BODIES = [
    "emoji 😀👩‍👩‍👧‍👦 🏳️‍🌈 flags 🇫🇷",
    "RTL שלום עולם مرحبا بالعالم \u202eevil\u202c \u200f",
    "combining e\u0301 a\u0308\u0323 Z\u0351\u0352\u0353\u0354 \u0915\u094d\u0937",
    "astral 𝄞 𝕏 𠜎 \U0010fffd \U000e0041",
    "specials <>&'\" ]]> &amp; \ufeff \ufffd \u2028 \u0085",
    "spaces \t tab\n newline  double  ",
]


async def test_odd_unicode_bodies_round_trip_byte_for_byte(hostile, connect):
    alice, bob, _ = await pair(hostile, connect)
    stanzas = []
    for b in ODD_BODIES:
        esc = b.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        stanzas.append(chat_xml(bob.bare, esc))
    # A carriage return can only arrive as a character reference. Prosody writes it
    # raw to the client, whose parser reads it as a newline, live or from the
    # archive alike: the archive must give what live delivery gave.
    cr = f"cr&#13;lf&#13;&#10;{token()}"
    stanzas.append(chat_xml(bob.bare, cr))
    await send_and_flush(alice, *stanzas)
    live = await bob.wait_for_message(
        lambda m: (m.findtext(q(NS_CLIENT, "body")) or "").endswith(cr[-12:]))
    results = await mam_all(bob)
    got = [r.body for r in results][-len(stanzas):]
    want = ODD_BODIES + [live.findtext(q(NS_CLIENT, "body"))]
    assert [g.encode("utf-8") for g in got] == [w.encode("utf-8") for w in want]
