#!/usr/bin/env bash
# A private apt configuration that sees only Debian 13 (trixie) main, with an empty
# dpkg status: `APT_CONFIG=<it> apt-get -s install ./x.deb` simulates installing a
# package on a fresh Debian 13, resolving its dependencies against trixie's archive.
# The package test uses it to check that the .deb built here (Debian 12) installs on
# Debian 13. Nothing of the machine's apt configuration, lists or dpkg database is
# used or changed. Prints the path of the configuration file.
#
#   scripts/debian13-apt.sh [DIR]     (default: target/debian13-apt)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$here/target/debian13-apt}"
mkdir -p "$dir/lists/partial" "$dir/archives/partial" "$dir/etc/apt.conf.d" "$dir/etc/preferences.d"
dir="$(cd "$dir" && pwd)"
: >"$dir/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
	>"$dir/sources.list"
cat >"$dir/apt.conf" <<CONF
Dir::Etc "$dir/etc";
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State "$dir";
Dir::State::Lists "$dir/lists";
Dir::State::status "$dir/status";
Dir::Cache "$dir";
Dir::Cache::Archives "$dir/archives";
APT::Sandbox::User "root";
Acquire::Languages "none";
CONF
APT_CONFIG="$dir/apt.conf" apt-get -qq update >&2
echo "$dir/apt.conf"
