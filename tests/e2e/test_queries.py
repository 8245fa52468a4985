"""Archive queries: filters, RSM paging, fin, metadata, the form, errors (XEP-0313 §4)."""

import asyncio
import re
import time

import pytest

from conftest import (
    NS_CLIENT, NS_DATA, NS_DELAY, NS_FORWARD, NS_MAM, NS_RSM, StanzaError, chat_xml,
    mam_all, mam_query, q, send_and_flush, token,
)


async def sender_and_archive(server, connect, n):
    """alice sends n chats to bob; returns (alice, bob, bodies). Queries run on bob."""
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    bodies = [f"{i:02d}-{token()}" for i in range(n)]
    if n:
        await send_and_flush(alice, *[chat_xml(bob.bare, body) for body in bodies])
        await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == bodies[-1])
    return alice, bob, bodies


async def next_second():
    """Return once the wall clock has moved into a later whole second (bounded)."""
    start = int(time.time())
    deadline = time.monotonic() + 3
    while int(time.time()) == start and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def bodies_of(results):
    return [r.body for r in results]


# -- result shape -----------------------------------------------------------

async def test_results_are_forwarded_messages_with_delay_and_the_queryid(server, connect):
    alice, bob, bodies = await sender_and_archive(server, connect, 1)
    queryid = "f27"
    reply = await bob.iq("set", f"<query xmlns='{NS_MAM}' queryid='{queryid}'/>")
    outer = [m for m in bob.messages if m.find(q(NS_MAM, "result")) is not None]
    assert len(outer) == 1
    msg = outer[0]
    assert msg.get("to") == bob.full
    assert msg.get("from") in (None, bob.bare)
    (result,) = list(msg)
    assert result.tag == q(NS_MAM, "result")
    assert result.get("queryid") == queryid
    (forwarded,) = list(result)
    assert forwarded.tag == q(NS_FORWARD, "forwarded")
    delay, archived = list(forwarded)
    assert delay.tag == q(NS_DELAY, "delay")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", delay.get("stamp"))
    assert archived.tag == q(NS_CLIENT, "message")
    assert archived.get("from") == alice.full and archived.get("to") == bob.bare
    assert archived.findtext(q(NS_CLIENT, "body")) == bodies[0]
    (fin,) = list(reply)
    assert fin.tag == q(NS_MAM, "fin") and fin.get("complete") == "true"
    rsm = fin.find(q(NS_RSM, "set"))
    assert rsm.findtext(q(NS_RSM, "first")) == result.get("id")
    assert rsm.findtext(q(NS_RSM, "last")) == result.get("id")


@pytest.mark.native_only
async def test_stamps_have_sub_second_precision_and_differ_within_one_second(server, connect):
    alice, bob, bodies = await sender_and_archive(server, connect, 2)
    results = await mam_all(bob)
    assert bodies_of(results) == bodies
    assert all("." in r.stamp for r in results)
    assert results[0].stamp < results[1].stamp


# -- filters ----------------------------------------------------------------

async def test_with_filters_by_bare_jid_and_matches_every_resource(server, connect):
    a, b, c = server.take_users(3)
    alice = await connect(server, a)
    bob1 = await connect(server, b, resource="r1")
    bob2 = await connect(server, b, resource="r2")
    carol = await connect(server, c)
    await send_and_flush(bob1, chat_xml(alice.bare, "from-r1"))
    await send_and_flush(carol, chat_xml(alice.bare, "from-carol"))
    await send_and_flush(bob2, chat_xml(alice.bare, "from-r2"))
    await send_and_flush(alice, chat_xml(carol.bare, "to-carol"))
    results, fin = await mam_query(alice, with_=bob1.bare)
    assert bodies_of(results) == ["from-r1", "from-r2"]
    assert fin.complete
    results, _ = await mam_query(alice, with_=carol.bare)
    assert bodies_of(results) == ["from-carol", "to-carol"]


@pytest.mark.native_only
async def test_with_a_full_jid_matches_only_that_resource(server, connect):
    a, b = server.take_users(2)
    alice = await connect(server, a)
    bob1 = await connect(server, b, resource="r1")
    bob2 = await connect(server, b, resource="r2")
    await send_and_flush(bob1, chat_xml(alice.bare, "from-r1"))
    await send_and_flush(bob2, chat_xml(alice.bare, "from-r2"))
    results, _ = await mam_query(alice, with_=bob2.full)
    assert bodies_of(results) == ["from-r2"]


async def test_start_and_end_select_an_inclusive_time_window(server, connect):
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    for body in ("t1", "t2", "t3"):
        if body != "t1":
            await next_second()
        await send_and_flush(alice, chat_xml(bob.bare, body))
    stamps = [r.stamp for r in await mam_all(bob)]
    assert len(set(stamps)) == 3, stamps
    results, _ = await mam_query(bob, start=stamps[1], end=stamps[1])
    assert bodies_of(results) == ["t2"]
    results, _ = await mam_query(bob, start=stamps[1])
    assert bodies_of(results) == ["t2", "t3"]
    results, _ = await mam_query(bob, end=stamps[1])
    assert bodies_of(results) == ["t1", "t2"]
    results, fin = await mam_query(bob, start="2000-01-01T00:00:00Z", end="2000-01-02T00:00:00Z")
    assert results == [] and fin.complete


async def test_before_id_after_id_and_ids_select_by_archive_id(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 5)
    ids = [r.id for r in await mam_all(bob)]
    results, _ = await mam_query(bob, after_id=ids[1])
    assert [r.id for r in results] == ids[2:]
    results, _ = await mam_query(bob, before_id=ids[3])
    assert [r.id for r in results] == ids[:3]
    results, _ = await mam_query(bob, after_id=ids[0], before_id=ids[4])
    assert [r.id for r in results] == ids[1:4]
    results, _ = await mam_query(bob, ids=[ids[3], ids[0]])
    assert sorted(r.id for r in results) == sorted([ids[0], ids[3]])


# -- RSM ----------------------------------------------------------------------

async def test_rsm_max_after_and_before_page_through_the_archive(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 7)
    page1, fin1 = await mam_query(bob, rsm={"max": 3})
    assert bodies_of(page1) == bodies[0:3] and not fin1.complete
    page2, fin2 = await mam_query(bob, rsm={"max": 3, "after": fin1.last})
    assert bodies_of(page2) == bodies[3:6] and not fin2.complete
    page3, fin3 = await mam_query(bob, rsm={"max": 3, "after": fin2.last})
    assert bodies_of(page3) == bodies[6:7] and fin3.complete
    back, _ = await mam_query(bob, rsm={"max": 2, "before": page2[0].id})
    assert bodies_of(back) == bodies[1:3]


async def test_an_empty_before_returns_the_last_page_in_chronological_order(server, connect):
    # XEP-0313 §4.3.1 Example: <set><max>10</max><before/></set>
    _, bob, bodies = await sender_and_archive(server, connect, 7)
    results, fin = await mam_query(bob, rsm={"max": 3, "before": ""})
    assert bodies_of(results) == bodies[4:7]
    assert (fin.first, fin.last) == (results[0].id, results[-1].id)
    assert not fin.complete
    results, fin = await mam_query(bob, rsm={"max": 10, "before": ""})
    assert bodies_of(results) == bodies and fin.complete


async def test_flip_page_reverses_the_order_of_a_page(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 5)
    results, fin = await mam_query(bob, rsm={"max": 3}, flip=True)
    assert bodies_of(results) == list(reversed(bodies[0:3]))
    results, fin = await mam_query(bob, rsm={"max": 3, "before": ""}, flip=True)
    assert bodies_of(results) == list(reversed(bodies[2:5]))


async def test_without_rsm_a_page_holds_the_first_20_messages(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 25)
    results, fin = await mam_query(bob)
    assert bodies_of(results) == bodies[:20]
    assert not fin.complete
    assert fin.count == 25


async def test_fin_is_complete_only_on_the_last_page_even_when_pages_divide_evenly(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 6)
    page1, fin1 = await mam_query(bob, rsm={"max": 3})
    assert not fin1.complete and fin1.element.get("complete") in (None, "false")
    page2, fin2 = await mam_query(bob, rsm={"max": 3, "after": fin1.last})
    assert bodies_of(page1 + page2) == bodies
    assert fin2.complete


async def test_paging_forward_returns_every_message_exactly_once_in_order(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 23)
    seen, after, completes = [], None, []
    for _ in range(10):
        rsm = {"max": 5, **({"after": after} if after else {})}
        results, fin = await mam_query(bob, rsm=rsm)
        seen += results
        completes.append(fin.complete)
        if fin.complete:
            break
        after = fin.last
    assert bodies_of(seen) == bodies
    assert len({r.id for r in seen}) == 23
    assert completes == [False] * 4 + [True]


async def test_count_is_the_total_size_of_the_filtered_archive(server, connect):
    _, bob, bodies = await sender_and_archive(server, connect, 4)
    _, fin = await mam_query(bob, rsm={"max": 1})
    assert fin.count == 4
    _, fin = await mam_query(bob, rsm={"max": 0})
    assert fin.count == 4


@pytest.fixture(scope="module")
def small_page_server(prosody_factory):
    return prosody_factory("max5", {"max_archive_query_results": 5}, users=4)


async def test_max_archive_query_results_caps_the_page_size(small_page_server, connect):
    _, bob, bodies = await sender_and_archive(small_page_server, connect, 8)
    results, fin = await mam_query(bob, rsm={"max": 100})
    assert bodies_of(results) == bodies[:5] and not fin.complete
    results, fin = await mam_query(bob)
    assert bodies_of(results) == bodies[:5]
    results, fin = await mam_query(bob, rsm={"max": 100, "after": fin.last})
    assert bodies_of(results) == bodies[5:] and fin.complete


@pytest.fixture(scope="module")
def no_total_server(prosody_factory):
    return prosody_factory("nototal", {"mam_include_total": False}, users=4)


# Not native_only: stock with internal storage honours it too (with SQL it does not).
async def test_count_is_absent_with_mam_include_total_false(no_total_server, connect):
    _, bob, bodies = await sender_and_archive(no_total_server, connect, 3)
    results, fin = await mam_query(bob, rsm={"max": 2})
    assert bodies_of(results) == bodies[:2]
    assert fin.set_element.find(q(NS_RSM, "count")) is None


# -- metadata and form ---------------------------------------------------------

async def test_metadata_of_an_empty_archive_has_neither_start_nor_end(server, connect):
    (u,) = server.take_users(1)
    client = await connect(server, u)
    reply = await client.iq("get", f"<metadata xmlns='{NS_MAM}'/>")
    (metadata,) = list(reply)
    assert metadata.tag == q(NS_MAM, "metadata")
    assert list(metadata) == []


async def test_metadata_names_the_first_and_last_archived_messages(server, connect):
    _, bob, _ = await sender_and_archive(server, connect, 3)
    archive = await mam_all(bob)
    reply = await bob.iq("get", f"<metadata xmlns='{NS_MAM}'/>")
    (metadata,) = list(reply)
    start, end = metadata.find(q(NS_MAM, "start")), metadata.find(q(NS_MAM, "end"))
    assert (start.get("id"), start.get("timestamp")) == (archive[0].id, archive[0].stamp)
    assert (end.get("id"), end.get("timestamp")) == (archive[-1].id, archive[-1].stamp)


async def test_the_query_form_lists_the_supported_fields(server, connect):
    (u,) = server.take_users(1)
    client = await connect(server, u)
    reply = await client.iq("get", f"<query xmlns='{NS_MAM}'/>")
    form = reply.find(f"{q(NS_MAM, 'query')}/{q(NS_DATA, 'x')}")
    assert form is not None and form.get("type") == "form"
    fields = {f.get("var"): f for f in form.findall(q(NS_DATA, "field"))}
    assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= set(fields)
    assert fields["FORM_TYPE"].get("type") == "hidden"
    assert fields["FORM_TYPE"].findtext(q(NS_DATA, "value")) == NS_MAM
    assert fields["with"].get("type") == "jid-single"
    assert fields["ids"].get("type") == "list-multi"


# -- errors -------------------------------------------------------------------

async def query_error(client, **kwargs):
    with pytest.raises(StanzaError) as info:
        await mam_query(client, **kwargs)
    return info.value


async def test_an_unknown_rsm_after_id_is_item_not_found(server, connect):
    _, bob, _ = await sender_and_archive(server, connect, 2)
    err = await query_error(bob, rsm={"max": 5, "after": "no-such-id"})
    assert err.condition == "item-not-found"


async def test_a_malformed_date_is_bad_request(server, connect):
    _, bob, _ = await sender_and_archive(server, connect, 1)
    err = await query_error(bob, start="yesterday")
    assert (err.type, err.condition) == ("modify", "bad-request")


async def test_a_wrong_form_type_is_bad_request(server, connect):
    _, bob, _ = await sender_and_archive(server, connect, 1)
    err = await query_error(bob, form_type="urn:xmpp:mam:1")
    assert (err.type, err.condition) == ("modify", "bad-request")


@pytest.mark.native_only
async def test_an_unknown_form_field_is_feature_not_implemented(server, connect):
    _, bob, _ = await sender_and_archive(server, connect, 1)
    err = await query_error(bob, extra_fields={"urn:example:color": "red"})
    assert err.condition == "feature-not-implemented"
