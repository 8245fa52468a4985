"""The engine as a Prosody storage provider (mod_storage_mam_native): Prosody's archive
store API, driven through Prosody's own storage manager by a test module
(plugins/mod_storage_contract_probe.lua) on a real Prosody, in an async runner and
outside one; the same rows our mod_mam writes; and prosody-migrator from a stock
internal archive into ours. See docs/storage-provider.md."""

import asyncio
import os
import pathlib
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import (BACKEND, sqlite_archive_rows, MAM_MODULE, PROSODY_BIN, REPO, WAIT, chat_xml, log_lines,
                      mam_all, send_and_flush, token)

import prosody_config  # noqa: E402  (conftest puts prosody-test-env on sys.path)

PROBE_DIR = pathlib.Path(__file__).resolve().parent / "plugins"
NS = "urn:xmpp:e2e:storage-contract"
ROOMS = "rooms.localhost"
LIMIT = 6
CHECKS = 106  # sentences the probe checks (so a check that stops running shows)

pytestmark = pytest.mark.skipif(MAM_MODULE != "native", reason="the provider is the native engine's")


def probe_options(**extra):
    """A server whose archive stores are ours, with the contract probe loaded."""
    return {
        "plugin_paths": [str(PROBE_DIR)],
        "modules_enabled": prosody_config.MODULES + ["storage_contract_probe"],
        "storage": {"archive": "mam_native", "muc_log": "mam_native"},
        "storage_archive_item_limit": LIMIT,
        "contract_room_host": ROOMS,
        "components": {ROOMS: "muc"},
        **extra,
    }


@pytest.fixture(scope="module")
def provider_server(prosody_factory):
    return prosody_factory("provider", probe_options(), users=4)


async def run_contract(client, mode):
    reply = await client.iq("set", f"<run xmlns='{NS}' mode='{mode}' prefix='{mode}-{token()}-'/>",
                            to=client.server.host, timeout=60)
    result = reply.find(f"{{{NS}}}result")
    assert result is not None, ET.tostring(reply)
    failures = [f.text for f in result.findall(f"{{{NS}}}failure")]
    return int(result.get("passed")), failures


async def test_the_archive_store_api_holds_its_contract_inside_a_runner(provider_server, connect):
    (user,) = provider_server.take_users(1)
    client = await connect(provider_server, user)
    passed, failures = await run_contract(client, "runner")
    assert failures == []
    assert passed == CHECKS
    # Nothing else keeps room archives on the component: the provider opened an
    # engine of its own there.
    opened = log_lines(provider_server, "opening one for store muc_log")
    assert [l for l in opened if l.startswith(f"{l[:15]} {ROOMS}:storage_mam_native")], opened


async def test_the_archive_store_api_holds_its_contract_outside_any_runner(provider_server, connect):
    (user,) = provider_server.take_users(1)
    client = await connect(provider_server, user)
    passed, failures = await run_contract(client, "loop")
    assert failures == []
    assert passed == CHECKS


async def test_the_provider_reads_and_writes_the_archive_our_mod_mam_keeps(provider_server, connect):
    a, b = provider_server.take_users(2)
    alice, bob = await connect(provider_server, a), await connect(provider_server, b)
    body = token()
    await send_and_flush(alice, chat_xml(bob.bare, body))
    # mod_mam archived it in Bob's archive; the provider finds it there, `with` bare.
    reply = await bob.iq("set", f"<find xmlns='{NS}' user='{b}' with='{alice.bare}'/>",
                         to=provider_server.host)
    items = reply.find(f"{{{NS}}}items").findall(f"{{{NS}}}item")
    mine = [i for i in items if i.text == body]
    assert len(mine) == 1 and mine[0].get("with") == alice.bare
    # What the provider appends, Bob's MAM query returns, under the provider's key.
    other = token()
    reply = await bob.iq("set", f"<append xmlns='{NS}' user='{b}' with='{alice.bare}' body='{other}'/>",
                         to=provider_server.host)
    key = reply.find(f"{{{NS}}}appended").get("key")
    results = await mam_all(bob, with_=alice.bare)
    assert [(r.id, r.body) for r in results][-2:] == [(mine[0].get("key"), body), (key, other)]
    # One engine per database: the provider used mod_mam's engine, never its own.
    assert log_lines(provider_server, "opening one for store archive") == []


# --------------------------------------------------------------------------- migrator

def migrator_program(tmp):
    """prosody-migrator of the Prosody under test, pointed at our plugin folder and
    the test's data directory (it reads no Prosody config for these)."""
    source = pathlib.Path(PROSODY_BIN) / "prosody-migrator" if PROSODY_BIN else pathlib.Path("/usr/bin/prosody-migrator")
    text = source.read_text()
    if PROSODY_BIN:
        # scripts/prosody13.sh patches prosody and prosodyctl only.
        lib = pathlib.Path(PROSODY_BIN).resolve().parent / "lib" / "prosody"
        text = text.replace("'/usr/lib/prosody", f"'{lib}")
    plugins = f"{REPO}/target/prosody-plugin/;"
    lines = []
    for line in text.splitlines():
        if line.startswith("CFG_PLUGINDIR="):
            value = line.split("=", 1)[1].strip().rstrip(";").strip("'")
            line = f"CFG_PLUGINDIR='{plugins}{value}';"
        elif line.startswith("CFG_DATADIR="):
            line = f"CFG_DATADIR='{tmp}/data';"
        lines.append(line)
    path = tmp / "prosody-migrator"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def stored_text(value):
    """A stanza as our SQLite file stores it: text, or compressed (archive_compression,
    on by default: `0x01`, dictionary version 0, then a plain zstd frame; an archive of
    a few messages has no dictionary yet), decoded with the zstd tool."""
    if isinstance(value, str):
        return value
    assert value[:2] == b"\x01\x00", value[:8]
    done = subprocess.run(["zstd", "-dc"], input=value[2:], capture_output=True, timeout=WAIT, check=True)
    return done.stdout.decode()


@pytest.mark.sqlite_only(reason="0.12's migrator passes no options to a storage module, so ours opens its default SQLite file")
def test_prosody_migrator_moves_a_stock_internal_archive_into_ours(tmp_path):
    """A stock internal archive (Prosody's own list files, written by Prosody's
    datamanager as mod_storage_internal lays them out) migrated into ours by the
    stock prosody-migrator: ids, times, `with` and stanzas kept."""
    data = tmp_path / "data"
    data.mkdir()
    # A stock internal archive: Prosody's own list files, written by Prosody's code.
    writer = tmp_path / "write_internal.lua"
    writer.write_text(f"""
local dm = require "util.datamanager";
dm.set_data_path("{data}");
local st = require "util.stanza";
local items = {{}};
for i = 1, 3 do
	local s = st.preserialize(st.message({{ type = "chat", from = "romeo@montague.lit/orchard", to = "juliet@localhost" }}):text_tag("body", "b" .. i));
	s.key, s.when, s.with = "stock-" .. i, 1600000000 + i, "romeo@montague.lit";
	s.attr.stamp = os.date("!%Y-%m-%dT%H:%M:%SZ", s.when);
	items[i] = s;
end
assert(dm.list_store("juliet", "localhost", "archive", items));
""")
    source = pathlib.Path(PROSODY_BIN).resolve().parent / "lib" / "prosody" if PROSODY_BIN \
        else pathlib.Path("/usr/lib/prosody")
    env = {**os.environ, "LUA_PATH": f"{source}/?.lua;;", "LUA_CPATH": f"{source}/?.so;;"}
    if PROSODY_BIN:
        # 13's modules are named prosody.util.*; its loader maps the old names.
        env["LUA_PATH"] = f"{source}/?.lua;{source.parent}/?.lua;;"
        env["LUA_CPATH"] = f"{source}/?.so;{source.parent}/?.so;;"
        writer.write_text("require 'prosody.loader';\n" + writer.read_text())
    done = subprocess.run(["lua5.4", str(writer)], capture_output=True, text=True, timeout=WAIT, env=env)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "migrator.cfg.lua"
    config.write_text(f"""
input {{ type = "internal"; path = "{data}"; hosts = {{ ["localhost"] = {{ "archive-archive" }} }} }}
output {{ type = "mam_native"; hosts = {{ ["localhost"] = {{ "archive-archive" }} }} }}
""")
    program = migrator_program(tmp_path)
    done = subprocess.run([str(program), "--root", "--config", str(config), "input", "output"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Done!" in done.stderr, done.stderr
    import sqlite3
    conn = sqlite3.connect(data / "mam_archive.sqlite")
    rows = sqlite_archive_rows(conn)
    conn.close()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("juliet", f"stock-{i}", (1600000000 + i) * 1_000_000, "romeo@montague.lit") for i in (1, 2, 3)]
    stanzas = [stored_text(r[4]) for r in rows]
    assert all("<body>b" in x and "from='romeo@montague.lit/orchard'" in x for x in stanzas), stanzas


@pytest.fixture(scope="module")
def keyed_provider_server(prosody_factory):
    return prosody_factory(
        "provider-keyed",
        probe_options(mam_database_key="provider key " + token(),
                      muc_mam_database_key="rooms key " + token()),
        users=2,
    )


@pytest.mark.sqlite_only(reason="SQLCipher encrypts the SQLite files")
async def test_the_provider_holds_its_contract_on_encrypted_archives(keyed_provider_server, connect):
    (user,) = keyed_provider_server.take_users(1)
    client = await connect(keyed_provider_server, user)
    passed, failures = await run_contract(client, "runner")
    assert failures == []
    assert passed == CHECKS
    # Both files the contract wrote (the host's and the rooms') are encrypted: neither
    # starts like plain SQLite, nor holds the probe's owners in clear.
    data = keyed_provider_server.dir / "data"
    for name in ("mam_archive.sqlite", "mam_muc_log.sqlite"):
        raw = (data / name).read_bytes()
        assert raw and not raw.startswith(b"SQLite format 3\x00"), name
        assert b"runner-" not in raw, name
