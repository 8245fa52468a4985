#!/usr/bin/env bash
# Installs Prosody 13.0.1 (Debian's bookworm-backports package, the same version
# Debian 13 ships) into a private prefix, without touching the system's Prosody 0.12
# or its apt configuration, and prints the directory holding its `prosody` and
# `prosodyctl`. Idempotent: an existing install is reused.
#
#   scripts/prosody13.sh [PREFIX]     (default: target/prosody13)
#
# How: a private apt sources list naming only bookworm-backports (signed by
# Debian's archive key, which every Debian 12 has), a private package-list
# directory, `apt-get download` of the exact version, `dpkg-deb -x` into PREFIX,
# and the two launchers pointed at PREFIX's sources instead of /usr/lib/prosody.
# Its Lua dependencies (lua5.4, lua-expat, lua-socket, lua-sec, lua-filesystem,
# lua-bitop) are the same Debian 12 packages 0.12 uses; scripts/ensure-deps.sh
# installs them.
set -euo pipefail

VERSION="13.0.1-1~bpo12+1"
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-$here/target/prosody13}"
prefix="$(mkdir -p "$prefix" && cd "$prefix" && pwd)"
bin="$prefix/root/usr/bin"

if [ -x "$bin/prosody" ] && grep -q "^CFG_SOURCEDIR='$prefix/root/usr/lib/prosody';" "$bin/prosody" \
	&& [ "$(cat "$prefix/root/usr/lib/prosody/prosody.version" 2>/dev/null)" = "13.0.1" ]; then
	echo "$bin"
	exit 0
fi

apt_dir="$prefix/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" \
	>"$apt_dir/sources.list"
apt_opts=(
	-o "Dir::Etc::SourceList=$apt_dir/sources.list"
	-o "Dir::Etc::SourceParts=/dev/null"
	-o "Dir::State::Lists=$apt_dir/lists"
	-o "Dir::Cache::Archives=$apt_dir/archives"
	-o "APT::Sandbox::User=root"
)
apt-get -qq "${apt_opts[@]}" update >&2
(cd "$apt_dir" && apt-get -qq "${apt_opts[@]}" download "prosody=$VERSION" >&2)
deb="$(ls "$apt_dir"/prosody_*.deb | head -n 1)"

rm -rf "$prefix/root"
dpkg-deb -x "$deb" "$prefix/root"
for launcher in prosody prosodyctl; do
	sed -i \
		-e "s|^CFG_SOURCEDIR='/usr/lib/prosody';|CFG_SOURCEDIR='$prefix/root/usr/lib/prosody';|" \
		-e "s|^CFG_PLUGINDIR='/usr/lib/prosody/modules/';|CFG_PLUGINDIR='$prefix/root/usr/lib/prosody/modules/';|" \
		"$bin/$launcher"
	grep -q "^CFG_SOURCEDIR='$prefix/root/usr/lib/prosody';" "$bin/$launcher" || {
		echo "prosody13.sh: could not point $launcher at $prefix" >&2
		exit 1
	}
done
echo "$bin"
