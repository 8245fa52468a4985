# Shared by pg-cluster.sh and mysql-server.sh (sourced, not run): the few things
# every private test database server needs. The sourcing script sets:
#   SERVER_OWNER    the OS user that owns the server's files when we are root
#   SERVER_PIDFILE  the file whose first line is the server's PID
#   SERVER_LOG      the server's log file

# Runs a command as the server's owner: SERVER_OWNER when we are root, else ourselves.
as_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$SERVER_OWNER" -- "$@"
	else
		"$@"
	fi
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# The server's PID, or nothing when it is not running.
server_pid() {
	local pid
	[ -r "$SERVER_PIDFILE" ] || return 0
	pid=$(head -n 1 "$SERVER_PIDFILE")
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		echo "$pid"
	fi
}

show_log() {
	echo "--- $SERVER_LOG (last lines)" >&2
	tail -n 20 "$SERVER_LOG" >&2 2>/dev/null || true
}
