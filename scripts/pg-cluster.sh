#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests, nothing shared with the system's.
#
#   scripts/pg-cluster.sh start DIR   create a cluster in DIR and start it
#   scripts/pg-cluster.sh stop DIR    stop it (by its PID, pg_ctl stop -m fast), remove DIR
#   scripts/pg-cluster.sh down DIR    stop it, keep DIR (a test's outage)
#   scripts/pg-cluster.sh up DIR      start it again, same port and password
#
# The server listens only on 127.0.0.1, on a free port, with its unix socket inside
# DIR; durability settings (fsync, synchronous_commit) stay at PostgreSQL's defaults.
# TCP connections need a password (scram-sha-256); the role `mam` (LOGIN, CREATEDB)
# gets a random one. TLS is on, with a certificate for 127.0.0.1 from a CA made for the
# cluster (DIR/ca.crt; the server also listens on 127.0.0.2, a name the certificate
# does not carry, for the host-name check). The unix socket (mode 0700 in a 0700 DIR) is only for the
# cluster's owner, who creates the role. `start` writes DIR/env, sourceable by sh:
#   MAM_TEST_PG='host=127.0.0.1 port=P user=mam password=W dbname=postgres'
#   MAM_TEST_PG_HOST, MAM_TEST_PG_PORT, MAM_TEST_PG_USER, MAM_TEST_PG_PASSWORD,
#   MAM_TEST_PG_DIR, MAM_TEST_PG_SSLROOTCERT
#
# initdb refuses to run as root: as root, everything runs as the `postgres` OS user
# (Debian's postgresql package creates it), and DIR is chowned to it. The binaries
# are the newest under /usr/lib/postgresql/*/bin (PG_BIN overrides).
set -euo pipefail

usage() {
	echo "usage: $0 start|stop|down|up DIR" >&2
	exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
case "$2" in
	/*) dir=$2 ;;
	*) dir=$PWD/$2 ;;
esac
data=$dir/data
marker=$dir/.mam-test-cluster
SERVER_OWNER=postgres
SERVER_PIDFILE=$data/postmaster.pid
SERVER_LOG=$dir/postgresql.log
# shellcheck source=server-lib.sh
. "$(dirname "$(readlink -f "$0")")/server-lib.sh"

pg_bin() {
	if [ -n "${PG_BIN:-}" ]; then
		echo "$PG_BIN"
		return
	fi
	local newest
	newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$newest" ] || [ ! -x "$newest/initdb" ]; then
		echo "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin:" \
			"install Debian's postgresql (scripts/ensure-deps.sh does)" >&2
		exit 1
	fi
	echo "$newest"
}

# Starts the server on the port written in DIR/port; waits until it accepts connections.
server_up() {
	local bin port
	bin=$(pg_bin)
	port=$(cat "$dir/port")
	if ! as_owner "$bin/pg_ctl" start -D "$data" -l "$dir/postgresql.log" -w -t 30 \
		-o "-p $port" >/dev/null; then
		echo "PostgreSQL did not start in $dir (port $port)" >&2
		show_log
		return 1
	fi
}

# pg_ctl stop -m fast (it signals the PID in postmaster.pid and waits); then makes
# sure that PID is gone, killing it as a last resort.
server_down() {
	local bin pid
	bin=$(pg_bin)
	pid=$(server_pid)
	[ -n "$pid" ] || return 0
	as_owner "$bin/pg_ctl" stop -D "$data" -m fast -w -t 30 >/dev/null || true
	wait_gone_or_kill "$pid" 10 PostgreSQL
}

start() {
	local bin owner password port tries
	bin=$(pg_bin)
	if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
		echo "$dir exists and is not empty: give start a new or empty directory" >&2
		exit 1
	fi
	mkdir -p "$dir"
	touch "$marker"
	owner=$(id -un)
	if [ "$(id -u)" -eq 0 ]; then
		owner=postgres
		chown postgres: "$dir" "$marker"
	fi
	chmod 0700 "$dir"
	if ! as_owner test -w "$dir"; then
		echo "$dir is not writable by $owner (a parent directory it cannot enter?)" >&2
		exit 1
	fi

	as_owner "$bin/initdb" -D "$data" -U "$owner" -E UTF8 --locale=C \
		--auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 || {
		echo "initdb failed:" >&2
		cat "$dir/initdb.log" >&2
		exit 1
	}
	# TLS with a certificate from a throw-away CA (DIR/ca.crt, for the clients' verify
	# modes), naming 127.0.0.1 and localhost only: a connection to 127.0.0.2, where the
	# server also listens, is the "wrong host name" case.
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mam-test-ca \
		-keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
		-keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$dir/server.ext"
	openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
		-CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
	rm -f "$dir/ca.key" "$dir/server.csr" "$dir/server.ext"
	chmod 0600 "$dir/server.key"
	chmod 0644 "$dir/ca.crt"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$dir/server.key" "$dir/server.crt" "$dir/ca.crt"
	fi

	# Only loopback TCP (IPv4) and a socket nobody else can reach; the rest of
	# postgresql.conf, fsync and synchronous_commit included, stays as initdb wrote it.
	as_owner tee -a "$data/postgresql.conf" >/dev/null <<-EOF

		# scripts/pg-cluster.sh: a private test cluster
		listen_addresses = '127.0.0.1,127.0.0.2'
		unix_socket_directories = '$dir'
		unix_socket_permissions = 0700
		max_connections = 200
		password_encryption = 'scram-sha-256'
		ssl = on
		ssl_cert_file = '$dir/server.crt'
		ssl_key_file = '$dir/server.key'
	EOF
	# Replace initdb's host lines: IPv4 loopback only, password always.
	as_owner tee "$data/pg_hba.conf" >/dev/null <<-EOF
		# scripts/pg-cluster.sh: owner over the socket; everyone else over loopback with a password
		local all $owner trust
		host all all 127.0.0.1/32 scram-sha-256
		host all all 127.0.0.2/32 scram-sha-256
	EOF

	# A free port can be taken between the check and the bind: try a few.
	for tries in 1 2 3 4 5; do
		port=$(free_port)
		echo "$port" >"$dir/port"
		if server_up 2>"$dir/start.err"; then
			break
		fi
		if [ "$tries" -eq 5 ]; then
			cat "$dir/start.err" >&2
			exit 1
		fi
	done
	rm -f "$dir/start.err"

	password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
	# Through stdin, so the password is never on a command line (ps).
	as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U "$owner" -d postgres \
		>/dev/null <<-EOF
		CREATE ROLE mam LOGIN CREATEDB PASSWORD '$password';
	EOF

	umask 077
	cat >"$dir/env" <<-EOF
		MAM_TEST_PG='host=127.0.0.1 port=$port user=mam password=$password dbname=postgres'
		MAM_TEST_PG_HOST=127.0.0.1
		MAM_TEST_PG_PORT=$port
		MAM_TEST_PG_USER=mam
		MAM_TEST_PG_PASSWORD=$password
		MAM_TEST_PG_DIR='$dir'
		MAM_TEST_PG_SSLROOTCERT='$dir/ca.crt'
	EOF
	echo "PostgreSQL $("$bin/postgres" -V | awk '{print $3}') on 127.0.0.1:$port (PID $(server_pid)), cluster in $dir"
}

case "$cmd" in
	start) start ;;
	stop) stop_and_remove cluster ;;
	down)
		[ -e "$marker" ] || { echo "no cluster in $dir" >&2; exit 1; }
		server_down
		;;
	up)
		[ -e "$marker" ] || { echo "no cluster in $dir" >&2; exit 1; }
		[ -n "$(server_pid)" ] || server_up
		;;
	*) usage ;;
esac
