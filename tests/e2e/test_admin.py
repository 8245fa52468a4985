"""`prosodyctl mod_mam <command>` against a running Prosody with our module: exit
codes, output, and the effect as a client sees it through MAM."""

import json
import re
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest

from conftest import (
    HOST, NS_CLIENT, NS_MAM, PLUGIN_PATH, REPO, canonical, chat_xml, mam_all, prosodyctl, q,
    send_and_flush, wait_log,
)

pytestmark = pytest.mark.native_only


@pytest.fixture(scope="module")
def admin_server(prosody_factory):
    return prosody_factory("admin", users=12)


async def conversation(server, connect, n=3):
    """Two fresh users; the first sends n messages to the second. Returns the clients."""
    a_user, b_user = server.take_users(2)
    a = await connect(server, a_user)
    b = await connect(server, b_user)
    for i in range(n):
        await send_and_flush(a, chat_xml(b.bare, f"msg {i}"))
    return a, b


def test_usage_errors_exit_2_with_a_clear_message(admin_server):
    cases = [
        (["frobnicate"], "Unknown command 'frobnicate'"),
        (["delete", "not-a-jid"], "Invalid JID 'not-a-jid': expected USER@HOST"),
        (["delete", f"u00@{HOST}", "--before", "yesterday"], "Invalid date 'yesterday'"),
        (["export", f"u00@{HOST}", "--format", "csv"], "Unknown format 'csv'"),
        (["import", "--from", "mysql"], "Unknown source 'mysql'"),
    ]
    for args, message in cases:
        r = prosodyctl(admin_server, "mod_mam", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    for command in ["import", "expire", "delete", "export", "stats"]:
        r = prosodyctl(admin_server, "mod_mam", command, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"Usage: prosodyctl mod_mam {command}"), r


async def test_version_prints_cargo_s_version_and_the_library_the_log_names_at_load(admin_server):
    version = re.search(r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M).group(1)
    library = PLUGIN_PATH / "mod_mam" / "mam_native.so"
    done = prosodyctl(admin_server, "mod_mam", "version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"prosody-mam-native {version}\nnative library: {library}\n"
    await wait_log(admin_server, f"prosody-mam-native {version} (native library {library})")


def test_an_unknown_host_fails_with_exit_1(admin_server):
    r = prosodyctl(admin_server, "mod_mam", "stats", "--host", "elsewhere.example")
    assert r.returncode == 1
    assert "Host 'elsewhere.example' is not a VirtualHost in the configuration" in r.stderr


async def test_export_writes_the_archive_as_json_lines_and_xml(admin_server, connect):
    a, b = await conversation(admin_server, connect)
    archived = await mam_all(a)
    r = prosodyctl(admin_server, "mod_mam", "export", a.bare, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert f"{a.bare}: exported 3 messages" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["id"], x["timestamp"], x["with"]) for x in rows] == [(m.id, m.stamp, b.bare) for m in archived]
    assert [canonical(ET.fromstring(x["stanza"])) for x in rows] == [canonical(m.message) for m in archived]

    r = prosodyctl(admin_server, "mod_mam", "export", a.bare)
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(r.stdout)
    assert root.tag == "{urn:xmpp:pie:0}server-data"
    results = root.findall(f".//{q(NS_MAM, 'result')}")
    assert [x.get("id") for x in results] == [m.id for m in archived]
    assert [x.findtext(f".//{q(NS_CLIENT, 'body')}") for x in results] == ["msg 0", "msg 1", "msg 2"]


async def test_stats_lists_each_user_with_counts(admin_server, connect):
    a, b = await conversation(admin_server, connect, n=4)
    r = prosodyctl(admin_server, "mod_mam", "stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"host {HOST}: "), r.stdout
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    assert lines[a.user][1] == "4" and lines[b.user][1] == "4", r.stdout


async def test_delete_with_a_contact_or_before_a_date_is_visible_through_mam(admin_server, connect):
    a, b = await conversation(admin_server, connect, n=2)
    c_user, = admin_server.take_users(1)
    c = await connect(admin_server, c_user)
    await send_and_flush(c, chat_xml(a.bare, "from c"))
    r = prosodyctl(admin_server, "mod_mam", "delete", a.bare, "--with", b.bare)
    assert r.returncode == 0, r.stderr
    assert f"{a.bare}: deleted 2 messages" in r.stdout
    assert [m.body for m in await mam_all(a)] == ["from c"]
    assert len(await mam_all(b)) == 2, "the other side's archive is untouched"

    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    r = prosodyctl(admin_server, "mod_mam", "delete", b.bare, "--before", tomorrow)
    assert r.returncode == 0 and f"{b.bare}: deleted 2 messages" in r.stdout, r
    assert await mam_all(b) == []


async def test_expire_deletes_messages_older_than_the_configured_age(admin_server, connect, tmp_path):
    a, b = await conversation(admin_server, connect, n=2)
    # The server's own config keeps a week: nothing of today is expired.
    r = prosodyctl(admin_server, "mod_mam", "expire")
    assert r.returncode == 0 and f"{HOST}: deleted 0 expired messages" in r.stdout, r
    assert len(await mam_all(a)) == 2
    # The same data with archive_expires_after = 1 (second, stock's smallest unit):
    # once a second has passed, expire removes everything.
    cfg = admin_server.cfg.read_text().replace(
        f'VirtualHost "{HOST}"', f'archive_expires_after = 1\n\nVirtualHost "{HOST}"')
    short = tmp_path / "short-expiry.cfg.lua"
    short.write_text(cfg)
    # The option's unit is a whole second and prosodyctl reads the wall clock, so
    # this one test waits (1.1 s) for the messages to be older than a second.
    time.sleep(1.1)
    r = prosodyctl(type("S", (), {"cfg": short})(), "mod_mam", "expire")
    assert r.returncode == 0, r.stderr
    assert f"{HOST}: deleted " in r.stdout and " 0 expired" not in r.stdout, r.stdout
    assert await mam_all(a) == []
