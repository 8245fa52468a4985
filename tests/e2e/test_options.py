"""Module options: validation at load, per-user item limit."""

import asyncio
import time

import pytest

from conftest import (
    NS_CLIENT, NS_DISCO_INFO, NS_MAM, StanzaError, chat_xml, log_lines, mam_all, mam_query,
    q, send_and_flush, wait_log,
)


@pytest.fixture(scope="module")
def bad_expiry_server(prosody_factory):
    return prosody_factory("bad-expiry", {"archive_expires_after": "soon"}, users=2)


@pytest.mark.native_only
async def test_an_invalid_archive_expires_after_fails_the_module_load_with_a_log_line(bad_expiry_server, connect):
    # The log file is written asynchronously to the port opening: poll, bounded.
    deadline = time.monotonic() + 10
    while True:
        log = bad_expiry_server.log_text()
        lines = [line for line in log.splitlines() if "archive_expires_after" in line]
        if lines or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert lines, "no log line names archive_expires_after"
    assert any("error" in line.lower() for line in lines), lines
    (u,) = bad_expiry_server.take_users(1)
    client = await connect(bad_expiry_server, u)
    reply = await client.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=client.bare)
    features = [f.get("var") for f in reply.iter(q(NS_DISCO_INFO, "feature"))]
    assert NS_MAM not in features
    with pytest.raises(StanzaError) as info:
        await mam_query(client)
    assert info.value.condition in ("service-unavailable", "feature-not-implemented")


@pytest.fixture(scope="module")
def limit_server(prosody_factory):
    return prosody_factory("limit5", {"storage_archive_item_limit": 5}, users=2)


# Not native_only: stock with internal storage passes too (over quota it truncates to
# floor(0.99 * limit) = 4 and appends, which for 5 is a sliding window).
async def test_storage_archive_item_limit_keeps_only_the_newest_messages(limit_server, connect):
    a, b = limit_server.take_users(2)
    alice, bob = await connect(limit_server, a), await connect(limit_server, b)
    bodies = [f"m{i}" for i in range(8)]
    await send_and_flush(alice, *[chat_xml(bob.bare, body) for body in bodies])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "m7")
    for client in (alice, bob):
        results = await mam_all(client)
        assert [r.body for r in results] == bodies[3:]
        _, fin = await mam_query(client, rsm={"max": 0})
        assert fin.count in (None, 5)


@pytest.fixture(scope="module")
def no_inline_server(prosody_factory):
    return prosody_factory("no-inline", {"mam_inline_read_wait": 0}, users=2)


@pytest.mark.native_only
async def test_with_no_inline_read_wait_queries_and_metadata_come_back_through_the_loop(
        no_inline_server, connect):
    # Every answer takes the watched-socket path: the pages, the count and the metadata
    # must be the same as when the loop waits for them.
    a, b = no_inline_server.take_users(2)
    alice, bob = await connect(no_inline_server, a), await connect(no_inline_server, b)
    bodies = [f"n{i}" for i in range(7)]
    await send_and_flush(alice, *[chat_xml(bob.bare, body) for body in bodies])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "n6")
    results = await mam_all(bob, page=3)
    assert [r.body for r in results] == bodies
    _, fin = await mam_query(bob, rsm={"max": 0})
    assert fin.count == 7
    reply = await bob.iq("get", f"<metadata xmlns='{NS_MAM}'/>")
    meta = reply.find(q(NS_MAM, "metadata"))
    assert meta.find(q(NS_MAM, "start")).get("id") == results[0].id
    assert meta.find(q(NS_MAM, "end")).get("id") == results[-1].id


@pytest.fixture(scope="module")
def bad_inline_server(prosody_factory):
    return prosody_factory("bad-inline", {"mam_inline_read_wait": 50}, users=1)


@pytest.mark.native_only
async def test_an_inline_read_wait_beyond_two_milliseconds_fails_the_load_naming_the_option(
        bad_inline_server):
    await wait_log(bad_inline_server, "mam_inline_read_wait")
    lines = log_lines(bad_inline_server, "mam_inline_read_wait")
    assert any("error" in line.lower() and "milliseconds from 0 to 2" in line
               for line in lines), lines


# --------------------------------------------------------------------------- periods

@pytest.fixture(scope="module")
def spelled_out_expiry_server(prosody_factory):
    # Prosody 13's own spelling (its default config says "1 week"); stock 0.12 reads
    # it as one week too. It once stopped the module from loading on both.
    return prosody_factory("expiry-1-week", {"archive_expires_after": "1 week"}, users=2)


async def test_a_period_written_out_as_prosody_13_writes_it_loads_and_archives(
        spelled_out_expiry_server, connect):
    server = spelled_out_expiry_server
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    await send_and_flush(alice, chat_xml(bob.bare, "kept a week"))
    results = await mam_all(bob)
    assert [r.body for r in results] == ["kept a week"]
    assert not [line for line in server.log_text().splitlines()
                if "archive_expires_after" in line and ("error" in line or "warn" in line)]


@pytest.fixture(scope="module")
def ambiguous_expiry_server(prosody_factory):
    return prosody_factory("expiry-2m", {"archive_expires_after": "2m"}, users=2)


@pytest.mark.native_only
async def test_an_ambiguous_period_loads_as_months_with_a_warning_naming_the_option(
        ambiguous_expiry_server, connect):
    server = ambiguous_expiry_server
    (u,) = server.take_users(1)
    client = await connect(server, u)
    assert await mam_all(client) == []
    await wait_log(server, "ambiguous period")
    lines = log_lines(server, "ambiguous period")
    assert any("warn" in line and "'archive_expires_after'" in line and "2 months" in line
               for line in lines), lines


# --------------------------------------------------------------------------- clean logs

@pytest.fixture(scope="module")
def quiet_server(prosody_factory):
    return prosody_factory("quiet", {"archive_expires_after": "1 day",
                                     "archive_cleanup_interval": 1}, users=3)


@pytest.mark.native_only
async def test_a_normal_session_leaves_no_warning_or_error_in_the_log(quiet_server, connect):
    # Prosody 13 warns about storage calls outside async context, deprecated APIs and
    # the like: archiving, queries, metadata, preferences, the query form and expiry
    # runs must give it nothing to say, on either version.
    server = quiet_server
    a, b = server.take_users(2)
    alice, bob = await connect(server, a), await connect(server, b)
    await send_and_flush(alice, *[chat_xml(bob.bare, f"quiet {i}") for i in range(5)])
    await bob.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == "quiet 4")
    assert len(await mam_all(bob)) == 5
    await bob.iq("get", f"<metadata xmlns='{NS_MAM}'/>")
    await bob.iq("get", f"<query xmlns='{NS_MAM}'/>")
    await bob.iq("set", f"<prefs xmlns='{NS_MAM}' default='always'><never/></prefs>")
    # Expiry runs every second here: wait for two to have finished.
    deadline = time.monotonic() + 10
    while len(log_lines(server, "Expiry run finished")) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(log_lines(server, "Expiry run finished")) >= 2
    bad = [line for line in server.log_text().splitlines()
           if ("\twarn\t" in line or "\terror\t" in line) and "Received SIGTERM" not in line]
    assert not bad, "\n".join(bad)
