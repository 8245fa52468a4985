#!/usr/bin/env bash
# A private MariaDB (or MySQL) server for the tests, nothing shared with the system's.
#
#   scripts/mysql-server.sh start DIR   create a server in DIR and start it
#   scripts/mysql-server.sh stop DIR    stop it (SIGTERM to the PID in its pid file,
#                                       wait, KILL as a last resort), remove DIR
#
# The server reads only DIR/my.cnf (--defaults-file: nothing from /etc/mysql), keeps
# its data, unix socket, pid file and log inside DIR, and listens only on 127.0.0.1,
# on a free port. The account `mam`@`127.0.0.1` (no other host) gets a random
# password and the privileges to create, fill and drop databases; the only other
# accounts are the local ones mariadb-install-db makes, reachable through the unix
# socket (mode 0700 DIR) by their OS user only. `start` writes DIR/env, sourceable by sh:
#   MAM_TEST_MYSQL_HOST, MAM_TEST_MYSQL_PORT, MAM_TEST_MYSQL_USER,
#   MAM_TEST_MYSQL_PASSWORD, MAM_TEST_MYSQL_DIR
#
# It never touches the system's mariadb service or /var/lib/mysql. As root, the server
# runs as the `mysql` OS user (Debian's mariadb-server package creates it), and DIR
# is chowned to it.
set -euo pipefail

usage() {
	echo "usage: $0 start|stop DIR" >&2
	exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
case "$2" in
	/*) dir=$2 ;;
	*) dir=$PWD/$2 ;;
esac
data=$dir/data
cnf=$dir/my.cnf
pidfile=$dir/mysqld.pid
SERVER_OWNER=mysql
SERVER_PIDFILE=$pidfile
SERVER_LOG=$dir/mysqld.log
# shellcheck source=server-lib.sh
. "$(dirname "$(readlink -f "$0")")/server-lib.sh"
sock=$dir/mysqld.sock
marker=$dir/.mam-test-mysql

# The first of the named programs on PATH (or in /usr/sbin, /usr/bin).
find_bin() {
	local name
	for name in "$@"; do
		if command -v "$name" >/dev/null 2>&1; then
			command -v "$name"
			return
		fi
		for d in /usr/sbin /usr/bin; do
			if [ -x "$d/$name" ]; then
				echo "$d/$name"
				return
			fi
		done
	done
	echo "none of $* found: install Debian's mariadb-server (scripts/ensure-deps.sh does)" >&2
	exit 1
}

# SQL as the local administrator, over the unix socket (unix_socket authentication:
# root's OS account is the server's `root`, anyone else's their own account).
admin_sql() {
	"$(find_bin mariadb mysql)" --defaults-file="$cnf" --protocol=socket -S "$sock" \
		-u "$(id -un)" --batch --skip-column-names "$@"
}

write_cnf() {
	local port=$1
	as_owner tee "$cnf" >/dev/null <<-EOF
		# scripts/mysql-server.sh: a private test server
		[mysqld]
		datadir = $data
		socket = $sock
		pid-file = $pidfile
		log-error = $dir/mysqld.log
		port = $port
		bind-address = 127.0.0.1
		skip-networking = 0
		skip-name-resolve
		skip-log-bin
		performance_schema = OFF
		innodb_buffer_pool_size = 32M
		max_connections = 100
		character-set-server = utf8mb4
		collation-server = utf8mb4_unicode_ci

		[client]
		socket = $sock
	EOF
}

# Starts the server (in its own session, in the background) on the port in my.cnf;
# waits until it answers on its socket. On failure, stops whatever was started.
server_up() {
	local mysqld i pid=""
	mysqld=$(find_bin mariadbd mysqld)
	rm -f "$pidfile"
	# A simple command in the background (the forked shell execs it, dropping the
	# shell's own descriptors: a caller's pipe must not stay open in the server), in a
	# session of its own; as root via setpriv, which execs too (runuser would stay
	# around as the server's parent).
	local drop=()
	if [ "$(id -u)" -eq 0 ]; then
		drop=(setpriv --reuid=mysql --regid=mysql --init-groups --)
	fi
	"${drop[@]}" setsid "$mysqld" --defaults-file="$cnf" </dev/null >>"$dir/mysqld.out" 2>&1 &
	local launcher=$!
	for i in $(seq 1 300); do
		pid=$(server_pid)
		if [ -n "$pid" ] && admin_sql -e 'SELECT 1' >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$launcher" 2>/dev/null && [ -z "$pid" ]; then
			break # it exited (a port taken meanwhile, say)
		fi
		sleep 0.1
	done
	echo "MariaDB did not start in $dir" >&2
	show_log
	server_down
	kill -TERM "$launcher" 2>/dev/null || true
	return 1
}

# SIGTERM to the PID in the pid file (a clean shutdown); waits for it to be gone,
# killing it as a last resort.
server_down() {
	local pid
	pid=$(server_pid)
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	wait_gone_or_kill "$pid" 30 MariaDB
}

start() {
	local install password port tries version
	install=$(find_bin mariadb-install-db mysql_install_db)
	find_bin mariadbd mysqld >/dev/null
	find_bin mariadb mysql >/dev/null
	if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
		echo "$dir exists and is not empty: give start a new or empty directory" >&2
		exit 1
	fi
	mkdir -p "$dir"
	touch "$marker"
	if [ "$(id -u)" -eq 0 ]; then
		chown mysql: "$dir" "$marker"
	fi
	chmod 0700 "$dir"
	if ! as_owner test -w "$dir"; then
		echo "$dir is not writable by the server's user (a parent directory it cannot enter?)" >&2
		exit 1
	fi

	port=$(free_port)
	write_cnf "$port"
	# Accounts: root (or the OS user running this) on localhost via unix_socket only,
	# no test database, no anonymous accounts.
	local user_opt=()
	[ "$(id -u)" -eq 0 ] && user_opt=(--user=mysql)
	as_owner "$install" --defaults-file="$cnf" "${user_opt[@]}" --datadir="$data" \
		--auth-root-authentication-method=socket --skip-test-db \
		>"$dir/install.log" 2>&1 || {
		echo "$(basename "$install") failed:" >&2
		cat "$dir/install.log" >&2
		exit 1
	}

	# A free port can be taken between the check and the bind: try a few.
	for tries in 1 2 3 4 5; do
		if server_up 2>"$dir/start.err"; then
			break
		fi
		if [ "$tries" -eq 5 ]; then
			cat "$dir/start.err" >&2
			exit 1
		fi
		port=$(free_port)
		write_cnf "$port"
	done
	rm -f "$dir/start.err"

	password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
	# Through stdin, so the password is never on a command line (ps). Anonymous
	# accounts (should this version make them) go; `mam` exists for 127.0.0.1 only.
	admin_sql <<-EOF
		DELETE FROM mysql.global_priv WHERE User = '';
		FLUSH PRIVILEGES;
		CREATE USER 'mam'@'127.0.0.1' IDENTIFIED BY '$password';
		GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER,
			CREATE TEMPORARY TABLES, LOCK TABLES ON *.* TO 'mam'@'127.0.0.1';
	EOF
	version=$(admin_sql -e 'SELECT VERSION()')

	umask 077
	cat >"$dir/env" <<-EOF
		MAM_TEST_MYSQL_HOST=127.0.0.1
		MAM_TEST_MYSQL_PORT=$port
		MAM_TEST_MYSQL_USER=mam
		MAM_TEST_MYSQL_PASSWORD=$password
		MAM_TEST_MYSQL_DIR='$dir'
	EOF
	echo "MariaDB $version on 127.0.0.1:$port (PID $(server_pid)), data in $dir"
}

case "$cmd" in
	start) start ;;
	stop) stop_and_remove server ;;
	*) usage ;;
esac
