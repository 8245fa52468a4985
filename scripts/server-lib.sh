# Shared by pg-cluster.sh and mysql-server.sh (sourced, not run): the few things
# every private test database server needs. The sourcing script sets (and, for
# stop_and_remove, defines server_down, dir and marker):
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

# Waits up to SECONDS for PID to be gone after it was asked to stop; kills it as a
# last resort. Usage: wait_gone_or_kill PID SECONDS NAME
wait_gone_or_kill() {
	local pid=$1 seconds=$2 name=$3
	for _ in $(seq 1 $((seconds * 10))); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "$name (PID $pid) did not stop within $seconds s; killing it" >&2
	kill -KILL "$pid" 2>/dev/null || true
}

# Stops the server (the sourcing script's server_down) and removes its directory
# $dir, but only a directory one of these scripts made (it holds $marker): never
# anyone else's data. Usage: stop_and_remove WHAT (e.g. "cluster", for messages).
stop_and_remove() {
	if [ ! -e "$dir" ]; then
		return 0
	fi
	if [ ! -e "$marker" ]; then
		echo "$dir is not a $1 made by $0 (no $marker): not touching it" >&2
		exit 1
	fi
	server_down
	rm -rf "$dir"
}
