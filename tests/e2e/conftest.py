"""End-to-end harness: a real Prosody (0.12 or 13) on loopback, real slixmpp clients.

Layout:
- `Prosody`: one private server (temp dir, free port, own pidfile/data/log), started
  with `prosody -F`, stopped by PID. `prosody_factory` (module-scoped) makes servers
  with extra options; tests share one server per distinct config per module.
- `Client`: a connected slixmpp client that records every incoming <message> as a raw
  ElementTree element, sends raw XML, and does iq round trips.
- `mam_query`, `mam_query_all`, `send_chat`, ... : XEP-0313 helpers that parse replies
  strictly (namespaces, queryid, forwarded/delay/message shape).

`MAM_MODULE=native` (default) runs the plugin from `target/prosody-plugin`;
`MAM_MODULE=stock` runs Prosody's own mod_mam. Tests marked `native_only` cover
deliberate differences from stock and are skipped under stock.

`MAM_TEST_PROSODY_BIN` names the directory of the `prosody` and `prosodyctl` to run
(`scripts/prosody13.sh` installs Prosody 13 privately and prints it); unset, the
system's (Debian 12's 0.12). Tests marked `prosody_012_only(reason)` or
`prosody_13_only(reason)` are about one version's behaviour and are skipped, with the
reason, on the other.

`MAM_TEST_BACKEND=sqlite` (default) keeps each native archive in the embedded SQLite
file; `MAM_TEST_BACKEND=postgres` gives every Prosody its own fresh PostgreSQL
database (`mam_sql`) on the server named by `MAM_TEST_PG_HOST/PORT/USER/PASSWORD`
(what `scripts/with-postgres.sh` exports). Tests marked `sqlite_only` are about the
SQLite file itself and are skipped there; tests marked `postgres_only` run only there.

Async tests (`async def test_...`) run on one event loop owned by this file.
"""

import asyncio
import atexit
import concurrent.futures
import inspect
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "prosody-test-env"))
import prosody_config  # noqa: E402

HOST = prosody_config.HOST
PROSODY_BIN = os.environ.get("MAM_TEST_PROSODY_BIN")


def prosody_program(name):
    """The path of `prosody` or `prosodyctl` of the Prosody under test."""
    return str(Path(PROSODY_BIN) / name) if PROSODY_BIN else name


def installed_prosody_version():
    """The version of the Prosody under test, from its sources' prosody.version
    (never by running `prosody --version`, which starts a server)."""
    if PROSODY_BIN:
        sources = Path(PROSODY_BIN).resolve().parent / "lib" / "prosody"
    else:
        sources = Path("/usr/lib/prosody")
    try:
        return (sources / "prosody.version").read_text().strip()
    except OSError:
        return "unknown"


PROSODY_VERSION = installed_prosody_version()
PROSODY_13 = PROSODY_VERSION.split(".")[0] == "13"
MAM_MODULE = os.environ.get("MAM_MODULE", "native")
BACKEND = os.environ.get("MAM_TEST_BACKEND", "sqlite")
PLUGIN_PATH = REPO / "target" / "prosody-plugin"
WAIT = 10.0  # upper bound (seconds) for every bounded wait in the suite
TEST_TIMEOUT = 120.0

NS_CLIENT = "jabber:client"
NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXT = "urn:xmpp:mam:2#extended"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_DATA = "jabber:x:data"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_PING = "urn:xmpp:ping"
NS_ROSTER = "jabber:iq:roster"
NS_REGISTER = "jabber:iq:register"


def q(ns, name):
    """Clark notation: q(NS_MAM, 'result') -> '{urn:xmpp:mam:2}result'."""
    return f"{{{ns}}}{name}"


def token():
    """A unique string for message bodies and ids."""
    return uuid.uuid4().hex[:12]


# --------------------------------------------------------------------------- loop

LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)


def run(coro):
    """Run a coroutine on the suite's loop (from sync fixtures)."""
    return LOOP.run_until_complete(asyncio.wait_for(coro, TEST_TIMEOUT))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        run(pyfuncitem.obj(**args))
        return True
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "native_only: deliberate difference from stock mod_mam; skipped with MAM_MODULE=stock",
    )
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): about the SQLite file itself; skipped with MAM_TEST_BACKEND=postgres",
    )
    config.addinivalue_line(
        "markers",
        "postgres_only: needs the PostgreSQL backend; runs only with MAM_TEST_BACKEND=postgres",
    )
    config.addinivalue_line(
        "markers",
        "prosody_012_only(reason): about Prosody 0.12's behaviour; skipped on 13",
    )
    config.addinivalue_line(
        "markers",
        "prosody_13_only(reason): about Prosody 13's behaviour; skipped on 0.12",
    )
    global PG
    if BACKEND not in ("sqlite", "postgres"):
        pytest.exit(f"MAM_TEST_BACKEND must be 'sqlite' or 'postgres', not {BACKEND!r}", returncode=2)
    if BACKEND == "postgres":
        PG = PgServer.from_env()
        if PG is None:
            pytest.exit(
                "MAM_TEST_BACKEND=postgres needs a PostgreSQL server: run under "
                "scripts/with-postgres.sh, or set MAM_TEST_PG_HOST, MAM_TEST_PG_PORT, "
                "MAM_TEST_PG_USER and MAM_TEST_PG_PASSWORD (a role with CREATEDB)",
                returncode=2,
            )
        try:
            PG.version = PG.psql("SHOW server_version")[0][0]
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            pytest.exit(f"MAM_TEST_BACKEND=postgres: cannot reach {PG}: {e}", returncode=2)


def backend_description():
    if BACKEND == "postgres":
        where = f"PostgreSQL {PG.version} at {PG}"
        if MAM_MODULE != "native":
            return f"postgres ({where}; unused: MAM_MODULE={MAM_MODULE})"
        return f"postgres ({where}, a fresh database per Prosody)"
    return "sqlite (embedded, mam_archive.sqlite in each Prosody's data dir)"


def run_description():
    return (f"Prosody {PROSODY_VERSION}, mam archive backend: {backend_description()}, "
            f"module: {MAM_MODULE}")


def pytest_report_header(config):
    return [run_description()]


def pytest_terminal_summary(terminalreporter):
    # Also under -q, where pytest prints no header.
    terminalreporter.write_line(run_description())


def pytest_collection_modifyitems(config, items):
    # E2E_NATIVE_ONLY_ON_STOCK=1 runs them against stock anyway: they should fail there,
    # which shows they test something stock gets wrong.
    if MAM_MODULE == "stock" and os.environ.get("E2E_NATIVE_ONLY_ON_STOCK") != "1":
        skip = pytest.mark.skip(reason="native_only: stock mod_mam deliberately differs here")
        for item in items:
            if "native_only" in item.keywords:
                item.add_marker(skip)
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None and BACKEND != "sqlite":
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"sqlite_only: {why}".rstrip(": ")))
        if item.get_closest_marker("postgres_only") is not None and not pg_archive():
            item.add_marker(pytest.mark.skip(
                reason="postgres_only: runs with MAM_TEST_BACKEND=postgres and MAM_MODULE=native"))
        for name, wanted in (("prosody_012_only", not PROSODY_13), ("prosody_13_only", PROSODY_13)):
            marker = item.get_closest_marker(name)
            if marker is not None and not wanted:
                why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
                item.add_marker(pytest.mark.skip(
                    reason=f"{name}: {why} (this is Prosody {PROSODY_VERSION})"))


def pytest_sessionfinish(session, exitstatus):
    for server in list(Prosody.running):
        server.stop()
    if PG is not None and os.environ.get("E2E_KEEP") != "1":
        for name in list(PG.created):
            PG.drop_database(name)
    pending = [t for t in asyncio.all_tasks(LOOP) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        LOOP.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


# --------------------------------------------------------------------------- server

@atexit.register
def _stop_leftover_servers():
    """Last resort (e.g. an interrupted run): stop every Prosody we started, by PID."""
    for server in list(Prosody.running):
        server.stop()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def password_for(user):
    return f"pw-{user}"


# --------------------------------------------------------------------------- PostgreSQL

def sql_literal(text):
    """A SQL string literal (for psql, which takes no bound parameters on -c)."""
    return "'" + str(text).replace("'", "''") + "'"


class PgServer:
    """A PostgreSQL server reached over loopback with a password, as a role that may
    create databases: the tests' own cluster (scripts/pg-cluster.sh)."""

    def __init__(self, host, port, user, password, cluster_dir=None):
        self.host, self.port, self.user, self.password = host, int(port), user, password
        self.cluster_dir = cluster_dir
        self.version = None
        self.created = set()  # databases made by create_database and not dropped yet

    @classmethod
    def from_env(cls, env=os.environ):
        """From MAM_TEST_PG_HOST/PORT/USER/PASSWORD, else from the keywords of MAM_TEST_PG."""
        keys = ("HOST", "PORT", "USER", "PASSWORD")
        values = {k: env.get(f"MAM_TEST_PG_{k}") for k in keys}
        if not all(values.values()) and env.get("MAM_TEST_PG"):
            words = dict(w.split("=", 1) for w in env["MAM_TEST_PG"].split() if "=" in w)
            values = {k: values[k] or words.get(k.lower()) for k in keys}
            values["HOST"] = values["HOST"] or words.get("hostaddr")
        if not all(values.values()):
            return None
        return cls(values["HOST"], values["PORT"], values["USER"], values["PASSWORD"],
                   env.get("MAM_TEST_PG_DIR"))

    def __str__(self):  # never the password
        return f"{self.host}:{self.port} as {self.user}"

    def psql(self, sql, database="postgres", timeout=WAIT):
        """Run one SQL command with psql over TCP; return the rows as tuples of strings."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"}
        done = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql on {self}/{database} failed: {done.stderr.strip()}\n  {sql}")
        return [tuple(line.split("\t")) for line in done.stdout.splitlines() if line]

    def create_database(self, name):
        """A new, empty database owned by our role (the name must be a plain identifier)."""
        assert name.replace("_", "").isalnum() and name.islower() and len(name) <= 63, name
        self.psql(f"CREATE DATABASE {name}")
        self.created.add(name)
        return name

    def drop_database(self, name):
        """Drop it, closing any connection still open to it."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.created.discard(name)

    def databases(self):
        return {row[0] for row in self.psql("SELECT datname FROM pg_database")}

    def connection(self, database):
        """The option table for `mam_sql` or Prosody's `sql` (mod_storage_sql's keys)."""
        return {"driver": "PostgreSQL", "database": database, "host": self.host,
                "port": self.port, "username": self.user, "password": self.password}


PG = None  # the PgServer of MAM_TEST_BACKEND=postgres (set in pytest_configure)


def pg_archive():
    """Do native archives of this run live in PostgreSQL?"""
    return BACKEND == "postgres" and MAM_MODULE == "native"


# --------------------------------------------------------------------------- MySQL/MariaDB

class MySqlServer:
    """A private MariaDB server on loopback (scripts/mysql-server.sh), started for the
    tests that ask for the session fixture `mysql_server` and stopped by PID after them.
    Its account may create databases; there is no Python driver: SQL goes through the
    `mariadb` client over TCP, the password in the environment (never on a command line)."""

    SCRIPT = REPO / "scripts" / "mysql-server.sh"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mam-e2e-mysql-"))
        self.started = False
        self.created = set()
        self.host = self.port = self.user = self.password = None
        self.version = None

    @staticmethod
    def missing():
        """Why no server can run here (a missing program), or None."""
        for names in (("mariadbd", "mysqld"), ("mariadb-install-db", "mysql_install_db"),
                      ("mariadb", "mysql")):
            if not any(shutil.which(n) or Path("/usr/sbin", n).exists() for n in names):
                return f"no {names[0]} (Debian's mariadb-server; scripts/ensure-deps.sh installs it)"
        return None

    def start(self):
        self.started = True  # stop() runs whatever start managed
        done = subprocess.run([str(self.SCRIPT), "start", str(self.dir)], capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/mysql-server.sh start failed:\n{done.stdout}{done.stderr}")
        env = {}
        for line in (self.dir / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'")
        self.host = env["MAM_TEST_MYSQL_HOST"]
        self.port = int(env["MAM_TEST_MYSQL_PORT"])
        self.user = env["MAM_TEST_MYSQL_USER"]
        self.password = env["MAM_TEST_MYSQL_PASSWORD"]
        self.version = self.sql("SELECT VERSION()")[0][0]
        return self

    def stop(self):
        """scripts/mysql-server.sh stop: SIGTERM to the server's PID, wait, remove the dir."""
        if not self.started:
            return
        self.started = False
        subprocess.run([str(self.SCRIPT), "stop", str(self.dir)], timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __str__(self):  # never the password
        return f"{self.host}:{self.port} as {self.user}"

    def sql(self, statement, database=None, timeout=WAIT):
        """Run SQL with the mariadb client over TCP; return the rows as tuples of strings."""
        env = {**os.environ, "MYSQL_PWD": self.password}
        client = shutil.which("mariadb") or shutil.which("mysql")
        argv = [client, "--no-defaults", "--batch", "--skip-column-names", "--connect-timeout=5",
                "--protocol=tcp", "-h", self.host, "-P", str(self.port), "-u", self.user]
        if database:
            argv.append(database)
        done = subprocess.run(argv + ["-e", statement], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb on {self}/{database} failed: {done.stderr.strip()}\n  {statement}")
        return [tuple(line.split("\t")) for line in done.stdout.splitlines() if line]

    def create_database(self, name):
        assert name.replace("_", "").isalnum() and name.islower() and len(name) <= 64, name
        self.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        self.created.add(name)
        return name

    def drop_database(self, name):
        self.sql(f"DROP DATABASE IF EXISTS {name}")
        self.created.discard(name)

    def connection(self, database):
        """Prosody's `sql` option table for this database (mod_storage_sql's keys)."""
        return {"driver": "MySQL", "database": database, "host": self.host,
                "port": self.port, "username": self.user, "password": self.password}


_MYSQL_SERVERS = []


@atexit.register
def _stop_leftover_mysql():
    """Last resort (e.g. an interrupted run): stop the MariaDB server we started, by PID."""
    for server in list(_MYSQL_SERVERS):
        server.stop()


@pytest.fixture(scope="session")
def mysql_server():
    """A private MariaDB server for the whole session, started on first use only;
    skips the test when the mariadb binaries are missing."""
    why = MySqlServer.missing()
    if why:
        pytest.skip(f"needs MariaDB: {why}")
    server = MySqlServer()
    _MYSQL_SERVERS.append(server)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        _MYSQL_SERVERS.remove(server)


def database_name(label):
    """A PostgreSQL database name from a label: lower case, [a-z0-9_], unique."""
    clean = "".join(c if c.isalnum() else "_" for c in label.lower())
    return f"e2e_{clean[:44]}_{uuid.uuid4().hex[:8]}"


def configures_archive_database(options):
    """Does a test's option table choose the archive's database itself? (its own
    `mam_sql`, a PostgreSQL `sql` table, or a SQLite file by `mam_database`)."""
    sql = options.get("sql")
    return ("mam_sql" in options or "mam_database" in options
            or (isinstance(sql, dict) and str(sql.get("driver", "")).lower() == "postgresql"))


def archive_count(server):
    """Rows in the server's archive table, read straight from its database (SQLite's
    `archive` or PostgreSQL's `mam_archive`): every user's messages, both directions."""
    if server.pg_database is not None:
        return int(PG.psql("SELECT count(*) FROM mam_archive", server.pg_database)[0][0])
    path = Path(server.options.get("mam_database") or server.dir / "data" / "mam_archive.sqlite")
    if not path.is_absolute():
        path = server.dir / "data" / path
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=WAIT)
    try:
        return conn.execute("SELECT count(*) FROM archive").fetchone()[0]
    finally:
        conn.close()


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def stored_id_text(value):
    """An archive id as our SQLite file stores it (src/store/sqlite/stored_id.rs):
    text, or a tag byte and the bytes of a canonical form (1: our 26-character
    Crockford ids, 2: a lower-case UUID, 3: lower-case hex)."""
    if isinstance(value, str):
        return value
    tag, raw = value[0], bytes(value[1:])
    if tag == 1 and len(raw) == 16:
        n = int.from_bytes(raw, "big")
        return "".join(CROCKFORD[(n >> (5 * (25 - i))) & 31] for i in range(26))
    if tag == 2 and len(raw) == 16:
        h = raw.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if tag == 3 and raw:
        return raw.hex()
    raise ValueError(f"not a stored archive id: {value!r}")


def sqlite_archive_rows(conn):
    """Every row of our SQLite archive as (user, id, when_us, with_bare, stanza), in
    archive order, with owners and contacts looked up and ids unpacked."""
    rows = conn.execute(
        "SELECT o.user, a.id, a.when_us, c.jid, a.stanza FROM archive AS a "
        "JOIN archive_owners AS o ON o.owner = a.owner "
        "JOIN archive_contacts AS c ON c.contact = a.contact ORDER BY a.when_us, a.seq").fetchall()
    return [(user, stored_id_text(i), when, with_bare, stanza) for user, i, when, with_bare, stanza in rows]


BUILT_PLUGIN = object()  # Prosody(plugin=...): the module `make plugin` built (MAM_MODULE)


class Prosody:
    """A private Prosody on 127.0.0.1 in a temp dir, serving one VirtualHost. Stopped by PID.

    On the PostgreSQL backend it gets a fresh database of its own (`pg_database`, kept
    across restarts, dropped at cleanup) as `mam_sql`, unless `options` choose the
    archive's database themselves.

    `plugin`: by default the module under test (MAM_MODULE); the package tests give the
    folder a package installed the module in, or None for no plugin folder at all."""

    running = set()

    def __init__(self, name, options=None, users=40, host=HOST, plugin=BUILT_PLUGIN):
        if MAM_MODULE not in ("native", "stock"):
            pytest.exit(f"MAM_MODULE must be 'native' or 'stock', not {MAM_MODULE!r}", returncode=2)
        if plugin is BUILT_PLUGIN:
            plugin = None
            if MAM_MODULE == "native":
                if not (PLUGIN_PATH / "mod_mam" / "mod_mam.lua").is_file():
                    pytest.exit(
                        f"MAM_MODULE=native but {PLUGIN_PATH}/mod_mam/mod_mam.lua is missing: "
                        "run `make plugin` first, or use MAM_MODULE=stock",
                        returncode=2,
                    )
                plugin = PLUGIN_PATH
        self.name = name
        self.host = host
        self.options = dict(options or {})
        self.dir = Path(tempfile.mkdtemp(prefix=f"mam-e2e-{name}-"))
        self.port = free_port()
        self.cfg = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.pg_database = None
        if pg_archive() and not configures_archive_database(self.options):
            self.pg_database = PG.create_database(database_name(name))
            self.options["mam_sql"] = PG.connection(self.pg_database)
        self.cfg.write_text(self.render(plugin))
        self.proc = None
        self._pool = [f"u{i:02d}" for i in range(users)]
        self._next = 0
        # With accounts in SQL storage, the first use creates the tables: not concurrently.
        # On MySQL, not at all: concurrent account writes (mod_storage_sql's delete and
        # insert in one transaction) can deadlock in InnoDB, failing a `register`.
        first = 1 if self.options.get("storage", "internal") != "internal" else 0
        sql = self.options.get("sql")
        if isinstance(sql, dict) and str(sql.get("driver", "")).lower() == "mysql":
            first = len(self._pool)
        for user in self._pool[:first]:
            self.register(user)
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(self.register, self._pool[first:]))

    def render(self, plugin):
        return prosody_config.render(self.dir, self.port, plugin, self.options, host=self.host)

    # accounts
    def register(self, user):
        subprocess.run(
            [prosody_program("prosodyctl"), "--config", str(self.cfg), "register", user, self.host,
             password_for(user)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=WAIT,
        )

    def take_users(self, n):
        """n usernames nobody else in this server's tests has used."""
        if self._next + n > len(self._pool):
            raise RuntimeError(f"user pool of server {self.name} exhausted; raise `users=`")
        users = self._pool[self._next:self._next + n]
        self._next += n
        return users

    # process
    def start(self):
        out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            [prosody_program("prosody"), "-F", "--config", str(self.cfg)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()
        Prosody.running.add(self)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"prosody exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prosody did not listen on {self.port} within {WAIT}s:\n{self.log_tail()}")

    def stop(self):
        proc, self.proc = self.proc, None
        Prosody.running.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        if os.environ.get("E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.pg_database is not None:
                PG.drop_database(self.pg_database)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])


def log_lines(server, needle):
    """The lines of a server's log that contain `needle`."""
    return [line for line in server.log_text().splitlines() if needle in line]


async def wait_log(server, needle, timeout=WAIT):
    """Waits (bounded) until a line containing `needle` is in the server's log."""
    deadline = time.monotonic() + timeout
    while not log_lines(server, needle):
        assert time.monotonic() < deadline, f"no log line with {needle!r}:\n{server.log_tail()}"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def prosody_factory(request):
    """prosody_factory(name, options=None, users=40) -> started Prosody (module-scoped)."""
    servers = []

    def make(name, options=None, users=40):
        server = Prosody(f"{request.module.__name__.rsplit('.', 1)[-1]}-{name}", options, users)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture(scope="module")
def server(prosody_factory):
    """A server with the default configuration, shared by the tests of one module."""
    return prosody_factory("default")


# --------------------------------------------------------------------------- client

class StanzaError(Exception):
    """An <iq type='error'/> reply: condition is the defined-condition element name."""

    def __init__(self, element):
        self.element = element
        err = element.find(q(NS_CLIENT, "error"))
        self.type = err.get("type") if err is not None else None
        self.condition = None
        if err is not None:
            for child in err:
                if child.tag.startswith(f"{{{NS_STANZAS}}}") and not child.tag.endswith("}text"):
                    self.condition = child.tag.split("}", 1)[1]
        super().__init__(f"{self.type}/{self.condition}: {ET.tostring(element, encoding='unicode')}")


class _AnyMessage(MatcherBase):
    def __init__(self):
        super().__init__(None)

    def match(self, xml):
        return xml.xml.tag == q(NS_CLIENT, "message")


class Client:
    """A connected slixmpp client that records incoming messages as ElementTree elements."""

    def __init__(self, server, user, resource):
        self.server = server
        self.user = user
        self.bare = f"{user}@{server.host}"
        self.full = f"{self.bare}/{resource}"
        self.xmpp = slixmpp.ClientXMPP(
            self.full, password_for(user),
            plugin_config={"feature_mechanisms": {"unencrypted_plain": True}},
        )
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_starttls = False
        self.xmpp.enable_plaintext = True
        self.xmpp.register_plugin("xep_0030")
        self.xmpp.register_plugin("xep_0199")
        self.messages = []  # every incoming <message>, raw, in arrival order
        self.xmpp.register_handler(Callback("e2e-messages", _AnyMessage(), self._on_message))
        self._ready = LOOP.create_future()
        self.xmpp.add_event_handler("session_start", self._on_session_start)
        self.xmpp.add_event_handler("failed_auth", self._on_failed_auth)

    def _on_message(self, stanza):
        self.messages.append(stanza.xml)

    def _on_session_start(self, _event):
        if not self._ready.done():
            self._ready.set_result(True)

    def _on_failed_auth(self, _event):
        if not self._ready.done():
            self._ready.set_exception(RuntimeError(f"authentication failed for {self.full}"))

    async def connect(self, presence=True):
        self.xmpp.connect(host="127.0.0.1", port=self.server.port)
        await asyncio.wait_for(self._ready, WAIT)
        if presence:
            self.send("<presence/>")
            await self.roundtrip()
        return self

    async def disconnect(self):
        if self.xmpp.transport is None:
            return
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), WAIT)
        except (asyncio.TimeoutError, Exception):
            self.xmpp.abort()

    # sending
    def send(self, xml):
        """Send raw XML (a stanza in the jabber:client default namespace)."""
        self.xmpp.send_raw(xml)

    async def iq(self, type_, payload=None, to=None, timeout=WAIT):
        """Send an iq with `payload` (XML string or Element); return the reply element.

        An error reply raises StanzaError."""
        iq = self.xmpp.Iq()
        iq["type"] = type_
        if to:
            iq["to"] = to
        if payload is not None:
            iq.append(ET.fromstring(payload) if isinstance(payload, str) else payload)
        try:
            reply = await iq.send(timeout=timeout)
        except IqError as e:
            raise StanzaError(e.iq.xml) from None
        except IqTimeout:
            raise AssertionError(f"no reply to iq within {timeout}s: {payload}") from None
        assert reply["type"] == "result"
        return reply.xml

    async def roundtrip(self):
        """An XEP-0199 ping to our server: everything the server sent before it has arrived."""
        await self.iq("get", f"<ping xmlns='{NS_PING}'/>", to=self.server.host)

    async def wait_for_message(self, predicate, timeout=WAIT):
        """First recorded message satisfying predicate; bounded poll."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if predicate(m):
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.full}: no matching message within {timeout}s")
            await asyncio.sleep(0.02)

    def delivered(self, body=None):
        """Recorded messages that are not MAM results (optionally with this body)."""
        out = []
        for m in self.messages:
            if m.find(q(NS_MAM, "result")) is not None:
                continue
            if body is not None and m.findtext(q(NS_CLIENT, "body")) != body:
                continue
            out.append(m)
        return out


@pytest.fixture
def connect():
    """connect(server, user, resource='e2e', presence=True) -> connected Client.

    All clients are disconnected at the end of the test."""
    clients = []

    async def make(server, user, resource="e2e", presence=True):
        client = Client(server, user, resource)
        clients.append(client)
        return await client.connect(presence=presence)

    yield make
    for client in clients:
        run(client.disconnect())


# --------------------------------------------------------------------------- XEP-0313 helpers

@dataclass
class Result:
    """One <message><result xmlns='urn:xmpp:mam:2'/></message> from a query."""
    id: str
    queryid: Optional[str]
    stamp: str
    message: ET.Element  # the archived {jabber:client}message
    outer: ET.Element

    @property
    def body(self):
        return self.message.findtext(q(NS_CLIENT, "body"))


@dataclass
class Fin:
    complete: bool
    first: Optional[str]
    last: Optional[str]
    count: Optional[int]
    element: ET.Element
    set_element: Optional[ET.Element] = field(default=None)


def parse_result(client, outer, archive=None):
    """Strictly parse one MAM result message (from `archive`, by default the client's own)."""
    assert outer.get("from") in (None, archive or client.bare), ET.tostring(outer)
    result = outer.find(q(NS_MAM, "result"))
    assert result is not None
    assert result.get("id"), "result without id"
    fwd = result.findall(q(NS_FORWARD, "forwarded"))
    assert len(fwd) == 1, ET.tostring(outer)
    delays = fwd[0].findall(q(NS_DELAY, "delay"))
    assert len(delays) == 1 and delays[0].get("stamp"), ET.tostring(outer)
    messages = fwd[0].findall(q(NS_CLIENT, "message"))
    assert len(messages) == 1, ET.tostring(outer)
    return Result(result.get("id"), result.get("queryid"), delays[0].get("stamp"), messages[0], outer)


def build_query(queryid=None, fields=None, rsm=None, flip=False, form_type=NS_MAM, form=True):
    """The <query xmlns='urn:xmpp:mam:2'/> element.

    fields: {name: value or list of values}; rsm: {'max': 5, 'after': id, 'before': id or ''}."""
    query = ET.Element(q(NS_MAM, "query"))
    if queryid:
        query.set("queryid", queryid)
    if form and (fields or form_type != NS_MAM):
        x = ET.SubElement(query, q(NS_DATA, "x"), {"type": "submit"})
        ft = ET.SubElement(x, q(NS_DATA, "field"), {"var": "FORM_TYPE", "type": "hidden"})
        ET.SubElement(ft, q(NS_DATA, "value")).text = form_type
        for name, value in (fields or {}).items():
            f = ET.SubElement(x, q(NS_DATA, "field"), {"var": name})
            for v in value if isinstance(value, (list, tuple)) else [value]:
                ET.SubElement(f, q(NS_DATA, "value")).text = v
    if rsm:
        s = ET.SubElement(query, q(NS_RSM, "set"))
        for key in ("max", "after", "before", "index"):
            if key in rsm:
                e = ET.SubElement(s, q(NS_RSM, key))
                if rsm[key] is not None and rsm[key] != "":
                    e.text = str(rsm[key])
    if flip:
        ET.SubElement(query, q(NS_MAM, "flip-page"))
    return query


_FIELD_NAMES = {"with_": "with", "before_id": "before-id", "after_id": "after-id"}


async def mam_query(client, rsm=None, flip=False, form_type=NS_MAM, extra_fields=None, to=None, **fields):
    """Run one archive query; return (results, fin). Errors raise StanzaError.

    Field kwargs: with_, start, end, before_id, after_id, ids (list). `to`: another
    archive (a room) instead of the client's own."""
    queryid = token()
    form = {_FIELD_NAMES.get(k, k): v for k, v in fields.items() if v is not None}
    form.update(extra_fields or {})
    already = len(client.messages)
    reply = await client.iq("set", build_query(queryid, form, rsm, flip, form_type), to=to)
    fins = reply.findall(q(NS_MAM, "fin"))
    assert len(fins) == 1, ET.tostring(reply)
    fin_el = fins[0]
    assert fin_el.get("complete") in (None, "true", "false"), ET.tostring(fin_el)
    set_el = fin_el.find(q(NS_RSM, "set"))
    first = last = count = None
    if set_el is not None:
        first_el = set_el.find(q(NS_RSM, "first"))
        first = first_el.text if first_el is not None else None
        last = set_el.findtext(q(NS_RSM, "last"))
        c = set_el.findtext(q(NS_RSM, "count"))
        count = int(c) if c is not None else None
    fin = Fin(fin_el.get("complete") == "true", first, last, count, fin_el, set_el)
    results = []
    for m in client.messages[already:]:
        r = m.find(q(NS_MAM, "result"))
        if r is not None and r.get("queryid") == queryid:
            results.append(parse_result(client, m, to))
    # With results, RSM first/last name the page's ends.
    if results:
        assert (fin.first, fin.last) == (results[0].id, results[-1].id) or flip, \
            f"fin first/last {fin.first}/{fin.last} vs page {results[0].id}/{results[-1].id}"
    return results, fin


async def mam_all(client, page=50, **fields):
    """Page forward through the whole (filtered) archive; return every Result.

    `to=` a room pages through that room's archive."""
    out, after = [], None
    for _ in range(1000):
        rsm = {"max": page}
        if after:
            rsm["after"] = after
        results, fin = await mam_query(client, rsm=rsm, **fields)
        out += results
        if fin.complete or not results:
            return out
        after = fin.last
    raise AssertionError("archive paging did not terminate")


async def mam_bodies(client, **fields):
    return [r.body for r in await mam_all(client, **fields)]


async def get_prefs(client):
    reply = await client.iq("get", f"<prefs xmlns='{NS_MAM}'/>")
    return parse_prefs(reply)


def parse_prefs(reply):
    prefs = reply.findall(q(NS_MAM, "prefs"))
    assert len(prefs) == 1, ET.tostring(reply)
    p = prefs[0]

    def jids(name):
        el = p.find(q(NS_MAM, name))
        if el is None:
            return None
        return sorted(j.text for j in el.findall(q(NS_MAM, "jid")))

    return p.get("default"), jids("always"), jids("never")


async def set_prefs(client, default, always=(), never=()):
    def jl(name, jids):
        return f"<{name}>" + "".join(f"<jid>{j}</jid>" for j in jids) + f"</{name}>"
    payload = f"<prefs xmlns='{NS_MAM}' default='{default}'>{jl('always', always)}{jl('never', never)}</prefs>"
    return parse_prefs(await client.iq("set", payload))


def chat_xml(to, body=None, type_="chat", extra="", id_=None):
    id_ = id_ or token()
    b = f"<body>{body}</body>" if body is not None else ""
    t = f" type='{type_}'" if type_ else ""
    return f"<message to='{to}'{t} id='{id_}'>{b}{extra}</message>"


async def send_and_flush(sender, *stanzas):
    """Send raw stanzas, then ping: the server has processed (and archived) them."""
    for s in stanzas:
        sender.send(s)
    await sender.roundtrip()


def stanza_ids(message, by=None):
    """<stanza-id xmlns='urn:xmpp:sid:0'/> children (optionally only those with this `by`)."""
    return [s for s in message.findall(q(NS_SID, "stanza-id")) if by is None or s.get("by") == by]


# --------------------------------------------------------------------------- admin commands

def use_module(server, plugin):
    """Rewrite a stopped server's config for `plugin` (a plugin path, or None for stock
    mod_mam), keeping its data directory, port and options."""
    assert server.proc is None, "stop the server before switching modules"
    server.cfg.write_text(server.render(plugin))


def prosodyctl(server, *args, timeout=60):
    """Run `prosodyctl --config <server's config> ARGS`; returns the CompletedProcess."""
    return subprocess.run(
        [prosody_program("prosodyctl"), "--config", str(server.cfg), *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def canonical(element):
    """An element as nested tuples with sorted attributes: compares XML regardless of
    attribute order (Prosody's serialiser and ours order attributes differently)."""
    return (
        element.tag,
        tuple(sorted(element.attrib.items())),
        (element.text or "").strip(),
        tuple(canonical(child) for child in element),
    )
