#!/usr/bin/env bash
# Installs what building, running and testing need, only when it is missing:
# Debian's prosody (0.12, Lua 5.4), lua5.4, lua-bitop (Prosody 13 needs it too; see
# scripts/prosody13.sh), lua-dbi-sqlite3, sqlite3, postgresql
# (server and client, for the tests' private clusters: scripts/pg-cluster.sh),
# lua-dbi-postgresql (stock Prosody's SQL storage on PostgreSQL), mariadb-server (for
# the import test's private server: scripts/mysql-server.sh) and lua-dbi-mysql (stock
# Prosody's SQL storage on MySQL/MariaDB), libssl-dev (the libcrypto SQLCipher, built
# into our SQLite for encryption at rest, links: docs/encryption.md), and for
# `make package` and its test
# dpkg-dev (dpkg-shlibdeps), binutils (strip, objdump), luarocks with liblua5.4-dev
# (`luarocks make` looks for Lua's headers even for a prebuilt library), zip/unzip and
# lintian, zstd (the storage provider's e2e test reads a compressed row with it), via
# apt-get, and the Python test client (slixmpp, pytest) via pip. Crates
# come via cargo.
set -euo pipefail

# version:name of every running system PostgreSQL cluster (postgresql-common's list).
online_pg_clusters() {
	command -v pg_lsclusters >/dev/null 2>&1 || return 0
	pg_lsclusters -h 2>/dev/null | awk '$4 == "online" { print $1 ":" $2 }'
}

# The PID of the system's MariaDB/MySQL server (Debian's pid file), when it runs.
# Private test servers (scripts/mysql-server.sh) keep their pid file in their own
# directory and never show up here.
system_mysql_pid() {
	local f pid
	for f in /run/mysqld/mysqld.pid /var/run/mysqld/mysqld.pid; do
		[ -r "$f" ] || continue
		pid=$(head -n 1 "$f")
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
			echo "$pid"
			return
		fi
	done
}

need=()
for pkg in prosody lua5.4 lua-bitop lua-dbi-sqlite3 sqlite3 postgresql lua-dbi-postgresql \
	mariadb-server lua-dbi-mysql openssl libssl-dev dpkg-dev binutils luarocks liblua5.4-dev zip unzip lintian zstd \
	python3-pip; do
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
		need+=("$pkg")
	fi
done
# python3-pip is only needed when no pip is on the machine already.
if python3 -m pip --version >/dev/null 2>&1; then
	need=("${need[@]/python3-pip/}")
fi
need=($(printf '%s\n' "${need[@]}" | grep -v '^$' || true))

if [ "${#need[@]}" -gt 0 ]; then
	echo "Installing Debian packages: ${need[*]}"
	SUDO=""
	[ "$(id -u)" -ne 0 ] && SUDO="sudo"
	# Keep the packages' own system services from starting (prosody would listen on
	# every interface with /etc/prosody's config; postgresql would start the cluster
	# `main` its postinst creates, mariadb-server the system server on
	# /var/lib/mysql): we only run private instances.
	policy_created=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
		$SUDO chmod +x /usr/sbin/policy-rc.d
		policy_created=1
	fi
	online_before=$(online_pg_clusters)
	mysql_before=$(system_mysql_pid)
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
	[ -n "$policy_created" ] && $SUDO rm -f /usr/sbin/policy-rc.d
	# Should a system cluster have started anyway (a policy-rc.d that allows it), stop
	# the ones this install started; a cluster that ran before is the admin's.
	# The tests never use them: scripts/pg-cluster.sh makes its own.
	for cluster in $(online_pg_clusters); do
		if ! grep -qx "$cluster" <<<"$online_before"; then
			echo "Stopping PostgreSQL cluster ${cluster/:/ } started by the package install"
			$SUDO pg_ctlcluster "${cluster%%:*}" "${cluster#*:}" stop
		fi
	done
	# Likewise the system MariaDB server, if the install started it (and it did not
	# run before): scripts/mysql-server.sh runs the tests' own.
	mysql_after=$(system_mysql_pid)
	if [ -n "$mysql_after" ] && [ -z "$mysql_before" ]; then
		echo "Stopping the system MariaDB server (PID $mysql_after) started by the package install"
		if [ -x /etc/init.d/mariadb ]; then
			$SUDO /etc/init.d/mariadb stop >/dev/null || $SUDO kill -TERM "$mysql_after" || true
		else
			$SUDO kill -TERM "$mysql_after" || true
		fi
	fi
fi

if ! command -v cargo >/dev/null 2>&1; then
	echo "cargo (the Rust toolchain) is required: install it with rustup or apt-get install cargo" >&2
	exit 1
fi

if ! python3 -c "import slixmpp, pytest" >/dev/null 2>&1; then
	echo "Installing Python test dependencies"
	python3 -m pip install -q -r tests/e2e/requirements.txt
fi
