"""Metrics through Prosody's statistics API: a real Prosody with `statistics =
"internal"` and mod_http_openmetrics, scraped over HTTP like Prometheus does."""

import asyncio
import re
import socket
import time
import urllib.request

import pytest

from conftest import (
    HOST, WAIT, StanzaError, chat_xml, free_port, mam_query, send_and_flush, set_prefs,
)

import prosody_config  # noqa: E402  (conftest puts prosody-test-env on sys.path)

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_HINTS = "urn:xmpp:hints"
PREFIX = "prosody_mod_mam__"

# Every family the module declares, with its OpenMetrics type.
FAMILIES = {
    "messages_archived": "counter",
    "messages_skipped": "counter",
    "messages_delivered_uncommitted": "counter",
    "queries": "counter",
    "query_latency_seconds": "histogram",
    "expiry_runs": "counter",
    "expired_messages": "counter",
    "expiry_duration_seconds": "histogram",
    "database_size_bytes": "gauge",
    "writer_queue_depth": "gauge",
    "writes_committed": "counter",
}

pytestmark = pytest.mark.native_only

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """One /metrics answer: samples by (name, labels) and the declared types."""

    def __init__(self, text):
        self.text = text
        self.types = {}
        self.samples = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, type_ = line.split(" ")
                self.types[name] = type_
            elif line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                name, _, labels = series.partition("{")
                key = (name, frozenset(_LABEL.findall(labels)))
                self.samples[key] = float(value)

    def get(self, name, **labels):
        """A sample of ours (PREFIX added, host label added); 0 if absent."""
        labels = {"host": HOST, **labels}
        return self.samples.get((PREFIX + name, frozenset(labels.items())), 0.0)

    def has(self, name, **labels):
        labels = {"host": HOST, **labels}
        return (PREFIX + name, frozenset(labels.items())) in self.samples


def _get(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as r:
        assert r.status == 200
        return r.read().decode()


async def scrape(server):
    text = await asyncio.get_running_loop().run_in_executor(None, _get, server.http_port)
    return Scrape(text)


@pytest.fixture(scope="module")
def metrics_server(prosody_factory):
    port = free_port()
    server = prosody_factory(
        "metrics",
        {
            "statistics": "internal",
            "statistics_interval": "manual",
            "modules_enabled": prosody_config.MODULES + ["http_openmetrics"],
            "http_ports": [port],
            "http_interfaces": ["127.0.0.1"],
            "archive_expires_after": 2,
            "archive_cleanup_interval": 1,
            "dont_archive_namespaces": [NS_CHATSTATES, NS_RECEIPTS],
        },
        users=6,
    )
    server.http_port = port
    # Prosody is up once c2s listens (what the factory waits for); HTTP may lag.
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def test_every_metric_family_is_declared_with_its_type_and_host_label(metrics_server):
    s = await scrape(metrics_server)
    ours = {name[len(PREFIX):]: t for name, t in s.types.items() if name.startswith(PREFIX)}
    assert ours == FAMILIES
    for name in ("messages_archived_total", "expiry_runs_total", "expired_messages_total",
                 "database_size_bytes", "writer_queue_depth", "writes_committed_total",
                 "query_latency_seconds_count", "expiry_duration_seconds_count"):
        assert s.has(name), name


async def test_archiving_skipping_and_queries_move_their_counters_by_exactly_what_happened(
        metrics_server, connect):
    a, b, c = metrics_server.take_users(3)
    alice = await connect(metrics_server, a)
    bob = await connect(metrics_server, b)
    carol = await connect(metrics_server, c)
    await set_prefs(carol, "never")
    before = await scrape(metrics_server)

    await send_and_flush(
        alice,
        chat_xml(bob.bare, "one"),                       # archived for alice and bob
        chat_xml(bob.bare, "two"),                       # archived for alice and bob
        chat_xml(carol.bare, "three"),                   # archived for alice; carol: prefs
        chat_xml(bob.bare, "news", type_="headline"),    # headline, both sides
        chat_xml(bob.bare, "room", type_="groupchat"),   # groupchat, both sides
        chat_xml(bob.bare, "secret", extra=f"<no-store xmlns='{NS_HINTS}'/>"),  # hint
        chat_xml(bob.bare, extra=f"<active xmlns='{NS_CHATSTATES}'/>"),  # nothing to keep
        chat_xml(bob.bare, extra=f"<received xmlns='{NS_RECEIPTS}' id='x'/>"),  # stripped empty
    )
    started = time.monotonic()
    results, _fin = await mam_query(bob, rsm={"max": 10})
    elapsed = time.monotonic() - started
    assert [r.body for r in results][-2:] == ["one", "two"]
    with pytest.raises(StanzaError) as bad_date:
        await mam_query(bob, start="yesterday")
    assert bad_date.value.condition == "bad-request"
    with pytest.raises(StanzaError) as unknown_id:
        await mam_query(bob, after_id="no-such-id")
    assert unknown_id.value.condition == "item-not-found"
    with pytest.raises(StanzaError) as unknown_field:
        await mam_query(bob, extra_fields={"urn:example:nope": "x"})
    assert unknown_field.value.condition == "feature-not-implemented"
    after = await scrape(metrics_server)

    def moved(name, **labels):
        return after.get(name, **labels) - before.get(name, **labels)

    assert moved("messages_archived_total") == 5
    skipped = {reason: moved("messages_skipped_total", reason=reason)
               for reason in ("headline", "groupchat", "hint", "default", "empty", "prefs")}
    assert skipped == {"headline": 2, "groupchat": 2, "hint": 2, "default": 2, "empty": 2, "prefs": 1}
    outcomes = {o: moved("queries_total", outcome=o)
                for o in ("ok", "bad-request", "item-not-found", "feature-not-implemented")}
    assert outcomes == {"ok": 1, "bad-request": 1, "item-not-found": 1, "feature-not-implemented": 1}
    # Only the query answered with a fin is timed, and it took no longer than the
    # client saw.
    assert moved("query_latency_seconds_count") == 1
    assert moved("query_latency_seconds_bucket", le="+Inf") == 1
    assert 0 < moved("query_latency_seconds_sum") <= elapsed
    # The queries waited for every earlier write (read-your-writes): nothing queued.
    assert after.get("writer_queue_depth") == 0
    # Five messages, besides any expiry batches.
    assert moved("writes_committed_total") >= 5
    assert after.get("database_size_bytes") > 0


async def test_expiry_counts_its_runs_and_every_message_it_deletes(metrics_server, connect):
    a, b = metrics_server.take_users(2)
    alice = await connect(metrics_server, a)
    bob = await connect(metrics_server, b)
    before = await scrape(metrics_server)
    await send_and_flush(alice, chat_xml(bob.bare, "short-lived"))
    # Nothing else deletes here: once everything archived so far has expired (2 s,
    # checked every 1 s), both totals agree.
    deadline = time.monotonic() + WAIT
    while True:
        s = await scrape(metrics_server)
        archived = s.get("messages_archived_total")
        if s.get("expired_messages_total") == archived or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert archived >= before.get("messages_archived_total") + 2
    assert s.get("expired_messages_total") == archived
    assert s.get("expiry_runs_total") > before.get("expiry_runs_total")
    assert s.get("expiry_duration_seconds_count") > before.get("expiry_duration_seconds_count")
