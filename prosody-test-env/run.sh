#!/usr/bin/env bash
# Run a private Prosody on 127.0.0.1 with the native mod_mam from target/prosody-plugin.
# Builds nothing: run `make plugin` first (or `make run`, which does both).
# Env: PORT (default 5222), MAM_MODULE=native|stock (default native),
# PROSODY=0.12|13 (default 0.12: Debian 12's; 13 is installed privately by
# scripts/prosody13.sh on first use).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
run_dir="$here/run"
port="${PORT:-5222}"
plugins="$repo/target/prosody-plugin"
mode="${MAM_MODULE:-native}"

case "${PROSODY:-0.12}" in
	0.12) bin="" ;;
	13) bin="$("$repo/scripts/prosody13.sh")/" ;;
	*) echo "error: PROSODY must be '0.12' or '13', not '$PROSODY'" >&2; exit 1 ;;
esac

case "$mode" in
	native)
		if [[ ! -f "$plugins/mod_mam/mod_mam.lua" ]]; then
			echo "error: $plugins/mod_mam/mod_mam.lua is missing; run 'make plugin' first" >&2
			echo "       (or MAM_MODULE=stock $0 to run Prosody's stock mod_mam)" >&2
			exit 1
		fi
		plugin_arg="$plugins" ;;
	stock) plugin_arg="-" ;;
	*) echo "error: MAM_MODULE must be 'native' or 'stock', not '$mode'" >&2; exit 1 ;;
esac

mkdir -p "$run_dir"
cfg="$run_dir/prosody.cfg.lua"
python3 "$here/prosody_config.py" "$run_dir" "$port" "$plugin_arg" > "$cfg"

# Demo accounts (re-registering just resets the password).
"${bin}prosodyctl" --config "$cfg" register alice localhost alice-pw >/dev/null
"${bin}prosodyctl" --config "$cfg" register bob localhost bob-pw >/dev/null

cat <<MSG
Prosody ${PROSODY:-0.12} ($mode mod_mam) on 127.0.0.1:$port, config $cfg
  alice@localhost  password: alice-pw
  bob@localhost    password: bob-pw
Connect without TLS (plain auth allowed on loopback), e.g. host 127.0.0.1 port $port.
Log: $run_dir/prosody.log. Press Ctrl-C to stop.
MSG

"${bin}prosody" -F --config "$cfg" &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
trap stop INT TERM EXIT
wait "$pid"
