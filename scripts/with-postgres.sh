#!/usr/bin/env bash
# Runs a command with a private PostgreSQL cluster (scripts/pg-cluster.sh) up:
#
#   scripts/with-postgres.sh CMD ARGS...
#
# starts a cluster in a fresh temp dir, exports MAM_TEST_PG (a libpq connection
# string for the role `mam`, which may create databases) and MAM_TEST_PG_HOST, _PORT,
# _USER, _PASSWORD, _DIR, runs CMD, stops the cluster whatever happens, and exits
# with CMD's status. With MAM_TEST_PG already set (a cluster provided by the caller)
# it only runs CMD.
set -euo pipefail

if [ $# -eq 0 ]; then
	echo "usage: $0 CMD ARGS..." >&2
	exit 2
fi

if [ -n "${MAM_TEST_PG:-}" ]; then
	exec "$@"
fi

cluster=$(dirname "$(readlink -f "$0")")/pg-cluster.sh
dir=$(mktemp -d "${TMPDIR:-/tmp}/mam-pg.XXXXXX")

cleanup() {
	"$cluster" stop "$dir" || echo "with-postgres: could not stop the cluster in $dir" >&2
}
trap cleanup EXIT

"$cluster" start "$dir"
set -a
# shellcheck source=/dev/null
. "$dir/env"
set +a

# CMD runs in the background (its stdin kept) so that a TERM sent to this script is
# passed on at once and the cluster stopped once CMD has exited. A Ctrl-C reaches
# CMD directly (same process group), so INT is not passed on twice.
"$@" <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM
trap ':' INT
while kill -0 "$child" 2>/dev/null; do
	wait "$child" || true
done
status=0
wait "$child" || status=$?
exit "$status"
