"""The packages as an admin installs them: the .deb through apt-get and dpkg, the rock
through `prosodyctl install`; then a real Prosody archives and answers queries through
a real client, the package is upgraded in place while that Prosody runs, Prosody is
restarted onto the new files, and the package is removed, leaving the archive.

Run by `make package-test` (part of `make test`), once on Prosody 0.12 and once on 13,
with MAM_TEST_DIST naming the folder `make package` wrote and MAM_TEST_DIST_NEXT a
second set built from the same library with packaging revision 2 (the "newer"
version to upgrade to). Skipped in the other end-to-end runs.

What is real and what is private (nothing here touches the machine's own Prosody,
/etc/prosody, /usr/lib/prosody or its dpkg database):
- The .deb is installed with the README's `apt-get install ./<deb>`, `apt-get remove`
  and `apt-get purge`, by the machine's apt and dpkg, into a private root
  (`dpkg --root`, passed by apt as DPkg::Options). Its dpkg database starts as a copy of
  the machine's (status and file lists), so apt resolves the package's dependencies
  against the prosody, lua5.4 and libc6 really installed here, and dpkg refuses any file
  that another package (prosody's own mod_mam) owns. The postinst runs as on a real
  system, chrooted into that root, which has a /bin/sh for it. Prosody then loads the
  module from <root>/usr/lib/prosody-mam-native/modules: the README's plugin_paths line
  with the root in front.
- The rock is installed with the README's `prosodyctl install $PWD/<rock>`, run as root
  without run_as_root, so prosodyctl switches to the `prosody` user as it does on a
  Debian server. The one difference: `installer_plugin_path` points into the test's
  directory (by default it is /var/lib/prosody/custom_plugins, the system's).
"""

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import NS_CLIENT, PROSODY_BIN, WAIT, Prosody, chat_xml, wait_log, mam_bodies, prosody_program, q, send_and_flush

DIST = os.environ.get("MAM_TEST_DIST")
DIST_NEXT = os.environ.get("MAM_TEST_DIST_NEXT")

pytestmark = pytest.mark.skipif(
    not (DIST and DIST_NEXT),
    reason="package tests run under `make package-test` (MAM_TEST_DIST and MAM_TEST_DIST_NEXT)",
)

PACKAGE = "prosody-mam-native"
DEB_MODULES = "/usr/lib/prosody-mam-native/modules"


def cargo_version():
    text = (Path(__file__).resolve().parents[2] / "Cargo.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


VERSION = cargo_version()


def one(folder, pattern):
    found = sorted(Path(folder).glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {found}"
    return found[0]


def sh(command, cwd, env=None, timeout=300):
    """Run one shell command line (as the README writes it); return the CompletedProcess."""
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done


def ok(done):
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def mapped_library(pid):
    """(path, inode, deleted) of the mam_native.so the process has mapped, from /proc."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and "mam_native.so" in fields[5]:
            path = fields[5]
            deleted = path.endswith(" (deleted)")
            found.add((path.removesuffix(" (deleted)"), int(fields[4]), deleted))
    assert len(found) == 1, f"expected one mapped mam_native.so, found {found}"
    return found.pop()


async def wait_loaded(server, library, times):
    """Waits (bounded) until the log says the module has loaded `times` times from
    `library`: Prosody may listen before its hosts' modules are loaded."""
    line = f"prosody-mam-native {VERSION} (native library {library})"
    deadline = time.monotonic() + WAIT
    while server.log_text().count(line) < times:
        assert time.monotonic() < deadline, f"no {line!r} ({times}) in the log:\n{server.log_tail()}"
        await asyncio.sleep(0.05)
    assert server.log_text().count(line) == times


def archived(server):
    """Rows in the server's SQLite archive, read from the file."""
    path = server.dir / "data" / "mam_archive.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=WAIT)
    try:
        return conn.execute("SELECT count(*) FROM archive").fetchone()[0]
    finally:
        conn.close()


async def chat(server, connect, alice, bob, bodies):
    """Alice sends `bodies` to Bob, who receives them; returns Bob's archive bodies."""
    a, b = await connect(server, alice), await connect(server, bob)
    await send_and_flush(a, *[chat_xml(b.bare, body) for body in bodies])
    await b.wait_for_message(lambda m: m.findtext(q(NS_CLIENT, "body")) == bodies[-1])
    history = await mam_bodies(b)
    await a.disconnect()
    await b.disconnect()
    return history


def version_command(server):
    done = subprocess.run([prosody_program("prosodyctl"), "--config", str(server.cfg), "mod_mam", "version"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return ok(done)


# --------------------------------------------------------------------------- Debian package

class DebRoot:
    """A private root for apt-get and dpkg (see the module docstring)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mam-deb-root-"))
        admin = self.root / "var/lib/dpkg"
        for sub in ("info", "updates", "triggers"):
            (admin / sub).mkdir(parents=True)
        for name in ("status", "diversions", "statoverride"):
            if Path("/var/lib/dpkg", name).exists():
                shutil.copy(Path("/var/lib/dpkg", name), admin / name)
        for listing in Path("/var/lib/dpkg/info").glob("*.list"):
            shutil.copy(listing, admin / "info" / listing.name)
        # The shell dpkg runs maintainer scripts with, inside the root (with its libraries).
        self._copy_program("/bin/sh")
        for sub in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt",
                    "etc/apt/apt.conf.d", "etc/apt/preferences.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # APT_CONFIG is read before /etc/apt's own files: none of the machine's apt
        # settings, sources or hooks apply, and dpkg gets --root.
        self.apt_config = self.root / "apt.conf"
        r = self.root
        self.apt_config.write_text(f"""
Dir::Etc "{r}/etc/apt";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "/dev/null";
Dir::State "{r}/var/lib/apt";
Dir::State::status "{r}/var/lib/dpkg/status";
Dir::Cache "{r}/var/cache/apt";
Dir::Log "{r}/var/log/apt";
APT::Sandbox::User "root";
DPkg::Options {{ "--root={r}"; "--log={r}/var/log/dpkg.log"; }};
""")

    def _copy_program(self, program):
        real = Path(os.path.realpath(program))
        targets = {Path(program): real}
        ldd = subprocess.run(["ldd", str(real)], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"(/\S+) \(0x", ldd):
            targets[Path(lib)] = Path(os.path.realpath(lib))
        for dest, source in targets.items():
            inside = self.root / dest.relative_to("/")
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, inside)

    def env(self):
        return {**os.environ, "APT_CONFIG": str(self.apt_config), "DEBIAN_FRONTEND": "noninteractive"}

    def run(self, command, cwd):
        """A README command line (`sudo ` dropped: we are root) with this root's apt."""
        return sh(command, cwd, env=self.env())

    def status(self):
        done = subprocess.run(
            ["dpkg-query", f"--admindir={self.root}/var/lib/dpkg", "-W", "-f", "${Status} ${Version}", PACKAGE],
            capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "not known"

    def files(self):
        return ok(subprocess.run(["dpkg-query", f"--admindir={self.root}/var/lib/dpkg", "-L", PACKAGE],
                                 capture_output=True, text=True)).split()

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def deb_root():
    root = DebRoot()
    yield root
    root.cleanup()


def sha(path):
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


async def test_the_deb_installs_beside_prosody_archives_upgrades_while_running_and_removes_keeping_the_archive(
        deb_root, connect):
    deb = one(DIST, f"{PACKAGE}_{VERSION}-1_amd64.deb")
    newer = one(DIST_NEXT, f"{PACKAGE}_{VERSION}-2_amd64.deb")
    sources = Path(PROSODY_BIN).resolve().parent / "lib/prosody" if PROSODY_BIN else Path("/usr/lib/prosody")
    stock = sources / "modules/mod_mam/mod_mam.lua"
    stock_before = sha(stock)

    # Install (README: sudo apt-get install ./prosody-mam-native_<version>_amd64.deb).
    out = ok(deb_root.run(f"apt-get install -y ./{deb.name}", cwd=deb.parent))
    assert f'plugin_paths = {{ "{DEB_MODULES}" }}' in out, out
    assert deb_root.status() == f"install ok installed {VERSION}-1"
    files = [f for f in deb_root.files() if (deb_root.root / f.lstrip("/")).is_file()]
    assert all(f.startswith((f"{DEB_MODULES}/mod_mam/", f"{DEB_MODULES}/mod_muc_mam/",
                             f"{DEB_MODULES}/mod_storage_mam_native/",
                             f"/usr/share/doc/{PACKAGE}/")) for f in files), files
    modules = deb_root.root / DEB_MODULES.lstrip("/")
    library = modules / "mod_mam" / "mam_native.so"
    assert library.is_file() and (modules / "mod_mam" / "mod_mam.lua").is_file()
    # Room archives: their shim, and the same library through a link.
    assert (modules / "mod_muc_mam" / "mod_muc_mam.lua").is_file()
    assert (modules / "mod_muc_mam" / "mam_native.so").resolve() == library.resolve()
    assert (modules / "mod_storage_mam_native" / "mod_storage_mam_native.lua").is_file()
    assert (deb_root.root / f"usr/share/doc/{PACKAGE}/examples/{PACKAGE}.cfg.lua").is_file()
    assert sha(stock) == stock_before, "the package must not touch Prosody's own mod_mam"

    # Configure (README: the plugin_paths line) and run.
    server = Prosody("package-deb", {"components": {"rooms.localhost": {
        "module": "muc", "modules_enabled": ["muc_mam"]}}}, users=4, plugin=modules)
    try:
        server.start()
        await wait_loaded(server, library, 1)
        await wait_log(server, "room archives (native library")
        alice, bob = server.take_users(2)
        assert await chat(server, connect, alice, bob, ["before-1", "before-2"]) == ["before-1", "before-2"]
        assert f"prosody-mam-native {VERSION}\nnative library: {library}\n" in version_command(server)
        path, inode, deleted = mapped_library(server.proc.pid)
        assert (path, inode, deleted) == (str(library), os.stat(library).st_ino, False)

        # Upgrade while Prosody runs (README: sudo apt-get install ./<newer>.deb): dpkg
        # writes the new library as a new file and renames it into place, so the
        # running Prosody keeps the old one mapped (shown as deleted) and carries on.
        out = ok(deb_root.run(f"apt-get install -y ./{newer.name}", cwd=newer.parent))
        assert "restart Prosody to run the new version" in out, out
        assert deb_root.status() == f"install ok installed {VERSION}-2"
        assert server.proc.poll() is None, "Prosody stopped during the upgrade"
        assert os.stat(library).st_ino != inode
        assert mapped_library(server.proc.pid) == (str(library), inode, True)
        assert await chat(server, connect, alice, bob, ["during-1"]) == ["before-1", "before-2", "during-1"]

        # A restart runs the new files.
        server.restart()
        await wait_loaded(server, library, 2)
        assert mapped_library(server.proc.pid) == (str(library), os.stat(library).st_ino, False)
        assert await chat(server, connect, alice, bob, ["after-1"]) == [
            "before-1", "before-2", "during-1", "after-1"]
        server.stop()
        rows = archived(server)
        assert rows >= 4

        # Remove (README: sudo apt-get remove prosody-mam-native): the module goes, and
        # the package with it (it has no configuration files to keep, so a purge is
        # the same); the archive in Prosody's data directory stays.
        ok(deb_root.run(f"apt-get remove -y {PACKAGE}", cwd=deb.parent))
        assert not library.exists() and not (modules / "mod_mam").exists()
        assert deb_root.status() == "not known", deb_root.status()
        assert archived(server) == rows
    finally:
        server.cleanup()


def test_the_deb_declares_what_it_needs_and_apt_resolves_it_on_this_debian(deb_root):
    deb = one(DIST, f"{PACKAGE}_{VERSION}-1_amd64.deb")
    fields = ok(subprocess.run(["dpkg-deb", "-f", str(deb), "Depends", "Architecture", "Version"],
                               capture_output=True, text=True))
    assert "prosody (>= 0.12.3)" in fields and "prosody (<< 13.1~)" in fields and "lua5.4" in fields
    assert "libc6 (>= " in fields and "Architecture: amd64" in fields
    assert f"Version: {VERSION}-1" in fields
    # Without prosody in the database, apt refuses: the dependency is really declared.
    status = deb_root.root / "var/lib/dpkg/status"
    paragraphs = status.read_text().split("\n\n")
    status.write_text("\n\n".join(p for p in paragraphs if not p.startswith("Package: prosody\n")))
    done = deb_root.run(f"apt-get install -y ./{deb.name}", cwd=deb.parent)
    assert done.returncode != 0 and "prosody" in done.stdout + done.stderr
    assert not (deb_root.root / DEB_MODULES.lstrip("/") / "mod_mam").exists()


def test_apt_on_a_fresh_debian_13_resolves_the_deb_with_trixie_s_prosody_13_and_lua():
    """The .deb is built on Debian 12; on Debian 13 its dependencies must be met by
    trixie's own packages (apt simulates the install on an empty system: every
    dependency comes from trixie's archive). The library's side is the glibc test."""
    deb = one(DIST, f"{PACKAGE}_{VERSION}-1_amd64.deb")
    repo = Path(__file__).resolve().parents[2]
    apt_config = ok(subprocess.run([str(repo / "scripts/debian13-apt.sh")], capture_output=True, text=True,
                                   timeout=300)).strip().splitlines()[-1]
    env = {**os.environ, "APT_CONFIG": apt_config}
    out = ok(sh(f"apt-get -s install ./{deb.name}", cwd=deb.parent, env=env))
    installs = dict(re.findall(r"^Inst (\S+) \((\S+) ", out, re.M))
    assert installs.get(PACKAGE) == f"{VERSION}-1", out
    assert installs.get("prosody", "").startswith("13.0."), out
    assert installs.get("lua5.4", "").startswith("5.4."), out
    assert installs.get("libc6", "").startswith("2.4"), out


def test_lintian_finds_no_errors_in_the_deb():
    deb = one(DIST, f"{PACKAGE}_{VERSION}-1_amd64.deb")
    done = subprocess.run(["lintian", "--fail-on", "error", "--display-info", str(deb)],
                          capture_output=True, text=True, timeout=300)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith("E:")]


# --------------------------------------------------------------------------- rock

def prosodyctl_as_admin(server, command, cwd):
    """`prosodyctl <command>` the way `sudo prosodyctl` runs on a Debian server: as root,
    with a configuration that does not say run_as_root, so prosodyctl switches to the
    prosody user (the test's server itself runs as root)."""
    admin_cfg = server.dir / "prosodyctl.cfg.lua"
    text = server.cfg.read_text()
    assert "run_as_root = true" in text
    admin_cfg.write_text(text.replace("run_as_root = true", ""))
    admin_cfg.chmod(0o644)
    line = f"{prosody_program('prosodyctl')} --config {admin_cfg} {command}"
    return sh(line, cwd)


async def test_the_rock_installs_with_prosodyctl_archives_upgrades_while_running_and_removes_keeping_the_archive(
        connect):
    rock = one(DIST, f"{PACKAGE}-{VERSION}-1.linux-x86_64.rock")
    newer = one(DIST_NEXT, f"{PACKAGE}-{VERSION}-2.linux-x86_64.rock")
    # The plugin tree and the rocks where the prosody user can reach them.
    work = Path(tempfile.mkdtemp(prefix="mam-rock-"))
    work.chmod(0o755)
    tree = work / "custom_plugins"
    tree.mkdir()
    shutil.chown(tree, "prosody", "prosody")
    for r in (rock, newer):
        shutil.copy(r, work / r.name)
        (work / r.name).chmod(0o644)
    server = Prosody("package-rock", {"installer_plugin_path": str(tree)}, users=4, plugin=None)
    server.dir.chmod(0o755)
    try:
        # README: sudo prosodyctl install $PWD/prosody-mam-native-<version>.linux-x86_64.rock
        out = ok(prosodyctl_as_admin(server, f"install $PWD/{rock.name}", cwd=work))
        assert f"{PACKAGE} {VERSION}-1 is now installed in {tree}" in out, out
        module = tree / "share/lua/5.4/mod_mam/mod_mam.lua"
        library = tree / "lib/lua/5.4/mam_native.so"
        assert module.is_file() and library.is_file()
        assert (tree / "share/lua/5.4/mod_muc_mam/mod_muc_mam.lua").is_file()
        assert library.stat().st_uid == module.stat().st_uid != 0, "installed as the prosody user"

        # Nothing to configure: Prosody searches the plugin installer's tree itself.
        server.start()
        await wait_loaded(server, library, 1)
        alice, bob = server.take_users(2)
        assert await chat(server, connect, alice, bob, ["before-1"]) == ["before-1"]
        assert f"native library: {library}\n" in version_command(server)
        path, inode, deleted = mapped_library(server.proc.pid)
        assert (path, inode, deleted) == (str(library), os.stat(library).st_ino, False)

        # Upgrade while running: LuaRocks moves the old version's files aside and writes
        # the new ones as new files, so the running Prosody carries on.
        out = ok(prosodyctl_as_admin(server, f"install $PWD/{newer.name}", cwd=work))
        assert f"{PACKAGE} {VERSION}-2 is now installed" in out, out
        assert server.proc.poll() is None, "Prosody stopped during the upgrade"
        assert os.stat(library).st_ino != inode
        assert mapped_library(server.proc.pid)[1:] == (inode, True)
        assert await chat(server, connect, alice, bob, ["during-1"]) == ["before-1", "during-1"]
        listed = ok(prosodyctl_as_admin(server, "list", cwd=work))
        assert f"{VERSION}-2" in listed and f"{VERSION}-1" not in listed, listed

        server.restart()
        await wait_loaded(server, library, 2)
        assert mapped_library(server.proc.pid) == (str(library), os.stat(library).st_ino, False)
        assert await chat(server, connect, alice, bob, ["after-1"]) == ["before-1", "during-1", "after-1"]
        server.stop()
        rows = archived(server)
        assert rows >= 3

        # README: sudo prosodyctl remove prosody-mam-native
        ok(prosodyctl_as_admin(server, f"remove {PACKAGE}", cwd=work))
        assert not module.exists() and not library.exists()
        assert archived(server) == rows
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def test_a_source_build_from_the_rockspec_says_it_needs_cargo(tmp_path):
    rockspec = one(DIST, f"{PACKAGE}-{VERSION}-1.rockspec")
    tarball = one(DIST, f"{PACKAGE}-{VERSION}.tar.gz")
    ok(subprocess.run(["tar", "-xzf", str(tarball), "-C", str(tmp_path)], capture_output=True, text=True))
    src = tmp_path / f"{PACKAGE}-{VERSION}"
    assert (src / "Cargo.toml").is_file() and not (src / "mam_native.so").exists()
    shutil.copy(rockspec, src)
    # The machine's PATH without the folders that hold a cargo.
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and not Path(d, "cargo").exists()]
    env = {**os.environ, "PATH": os.pathsep.join(dirs), "HOME": str(tmp_path)}
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("luarocks", path=env["PATH"]) and shutil.which("sh", path=env["PATH"])
    done = subprocess.run(["luarocks", "--lua-version=5.4", f"--tree={tmp_path / 'tree'}", "make",
                           rockspec.name], cwd=src, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "building from source needs cargo (Rust)" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_packaged_library_runs_on_the_glibc_of_debian_12_and_13():
    """Debian 12 has glibc 2.36, Debian 13 2.41: the library may need no symbol newer
    than 2.36 (then every newer glibc has it), and links only libraries both ship:
    besides glibc's, OpenSSL's libcrypto.so.3 (SQLCipher's cipher, docs/encryption.md;
    Debian 12's libssl3 3.0, Debian 13's libssl3t64 3.5, one ABI), needing no symbol
    version past 3.0."""
    rock = one(DIST, f"{PACKAGE}-{VERSION}-1.linux-x86_64.rock")
    workdir = Path(tempfile.mkdtemp(prefix="mam-rock-lib-"))
    try:
        ok(subprocess.run(["unzip", "-q", str(rock), "lib/mam_native.so", "-d", str(workdir)],
                          capture_output=True, text=True))
        lib = workdir / "lib/mam_native.so"
        symbols = ok(subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True))
        versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", symbols)}
        assert versions and max(versions) <= (2, 36), sorted(versions)
        needed = set(re.findall(r"NEEDED\s+(\S+)", ok(subprocess.run(["objdump", "-p", str(lib)],
                                                                     capture_output=True, text=True))))
        assert needed <= {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2",
                          "libcrypto.so.3"}, needed
        openssl = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"OPENSSL_(\d+\.\d+\.\d+)", symbols)}
        assert openssl and max(openssl) <= (3, 0, 0), sorted(openssl)
        assert "luaopen_mam_native" in symbols
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_version_is_cargo_toml_s_everywhere():
    deb = one(DIST, f"{PACKAGE}_{VERSION}-1_amd64.deb")
    assert ok(subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True)).strip() \
        == f"{VERSION}-1"
    rockspec = one(DIST, f"{PACKAGE}-{VERSION}-1.rockspec").read_text()
    assert f'version = "{VERSION}-1"' in rockspec
    changelog = (Path(__file__).resolve().parents[2] / "CHANGELOG.md").read_text()
    assert f"## {VERSION}" in changelog

