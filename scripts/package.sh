#!/usr/bin/env bash
# make package: writes dist/ from the release build (target/release/libmam_native.so,
# built by the Makefile), lua/mod_mam/ and lua/mod_muc_mam/:
#
#   prosody-mam-native_<V>-<R>_amd64.deb            Debian 12 and 13, amd64
#   prosody-mam-native-<V>-<R>.rockspec             LuaRocks spec (a source build needs cargo)
#   prosody-mam-native-<V>-<R>.linux-x86_64.rock    binary rock: `prosodyctl install` it
#   prosody-mam-native-<V>.tar.gz                   the source the rockspec names
#   SHA256SUMS
#
# <V> is Cargo.toml's version, <R> the packaging revision (PACKAGE_REVISION, default 1:
# the Debian revision and the rockspec revision). The package test builds a second,
# "newer" set from the same build with PACKAGE_REVISION=2 (and DIST=another folder) to
# upgrade into.
#
# Needs dpkg-dev (dpkg-shlibdeps), binutils (strip), luarocks and lua5.4:
# scripts/ensure-deps.sh installs them. Nothing outside the repository is touched.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
revision="${PACKAGE_REVISION:-1}"
dist="${DIST:-$here/dist}"
lib="${MAM_LIB:-$here/target/release/libmam_native.so}"
name=prosody-mam-native
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
[ -f "$lib" ] || { echo "package.sh: $lib is missing: run cargo build --release (make package does)" >&2; exit 1; }

# Dates in the packages come from the last commit, so a rebuild of the same commit
# gives the same files.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

stage="$(mktemp -d "${TMPDIR:-/tmp}/mam-package.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$dist"
rm -f "$dist/${name}_${version}-${revision}_amd64.deb" "$dist/$name-$version-$revision".* "$dist/SHA256SUMS"

# The library as shipped: without debugging symbols (luaopen_mam_native stays
# exported: --strip-unneeded keeps the dynamic symbol table).
strip --strip-unneeded --remove-section=.comment -o "$stage/mam_native.so" "$lib"
chmod 0644 "$stage/mam_native.so"

# ------------------------------------------------------------------ Debian package
deb_version="$version-$revision"
root="$stage/deb"
moddir="$root/usr/lib/$name/modules/mod_mam"
docdir="$root/usr/share/doc/$name"
install -d -m 0755 "$moddir" "$docdir/examples" "$docdir/docs" "$root/DEBIAN"
install -m 0644 lua/mod_mam/*.lua "$moddir/"
install -m 0644 "$stage/mam_native.so" "$moddir/mam_native.so"
# Room archives: their shim beside the same engine files, and the same library (a
# link: both modules load one copy of it).
muc_moddir="$root/usr/lib/$name/modules/mod_muc_mam"
install -d -m 0755 "$muc_moddir"
install -m 0644 lua/mod_muc_mam/*.lua lua/mod_mam/*.lib.lua "$muc_moddir/"
ln -s ../mod_mam/mam_native.so "$muc_moddir/mam_native.so"
# The storage provider (docs/storage-provider.md): the same way.
provider_moddir="$root/usr/lib/$name/modules/mod_storage_mam_native"
install -d -m 0755 "$provider_moddir"
install -m 0644 lua/mod_storage_mam_native/*.lua lua/mod_mam/*.lib.lua "$provider_moddir/"
ln -s ../mod_mam/mam_native.so "$provider_moddir/mam_native.so"
install -m 0644 packaging/debian/copyright "$docdir/copyright"
install -m 0644 packaging/prosody-mam-native.cfg.lua "$docdir/examples/"
gzip -9n -c README.md >"$docdir/README.md.gz"
for doc in docs/*.md; do
	gzip -9n -c "$doc" >"$docdir/docs/$(basename "$doc").gz"
done
gzip -9n -c CHANGELOG.md >"$docdir/changelog.gz"
changelog_date="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
maintainer="$(sed -n 's/^Maintainer: //p' packaging/debian/control.in)"
{
	echo "$name ($deb_version) unstable; urgency=medium"
	echo
	echo "  * Release $version, packaging revision $revision (see changelog.gz)."
	echo
	echo " -- $maintainer  $changelog_date"
} | gzip -9n >"$docdir/changelog.Debian.gz"
chmod 0644 "$docdir"/*.gz "$docdir"/docs/*.gz

# Shared-library dependencies of the library, as Debian computes them (libc6, libgcc-s1).
mkdir -p "$stage/shlibs/debian"
: >"$stage/shlibs/debian/control"
shlibs="$(cd "$stage/shlibs" && dpkg-shlibdeps -O -e "$moddir/mam_native.so" 2>/dev/null \
	| sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || { echo "package.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

installed_size="$(du -k -s --apparent-size "$root/usr" | cut -f1)"
sed -e "s|@VERSION@|$deb_version|" -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s|@SHLIBS@|$shlibs|" \
	packaging/debian/control.in >"$root/DEBIAN/control"
install -m 0755 packaging/debian/postinst "$root/DEBIAN/postinst"
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="$dist/${name}_${deb_version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null

# ------------------------------------------------------------------ source tarball
# Tracked files as they are now (committed or not), for the rockspec's source build.
tarball="$dist/$name-$version.tar.gz"
if git rev-parse --git-dir >/dev/null 2>&1; then
	tree="$(git stash create 2>/dev/null || true)"
	git archive --format=tar.gz --prefix="$name-$version/" "${tree:-HEAD}" >"$tarball"
else
	# Not a git checkout (e.g. built from that tarball): pack it again as it is.
	tar --exclude=./target --exclude=./dist --transform "s|^\.|$name-$version|" \
		-czf "$tarball" .
fi

# ------------------------------------------------------------------ rock
rock_version="$version-$revision"
rockspec_name="$name-$rock_version.rockspec"
sed -e "s|@VERSION@|$version|g" -e "s|^version = \"$version-1\"|version = \"$rock_version\"|" \
	packaging/rock/prosody-mam-native.rockspec.in >"$dist/$rockspec_name"
grep -q "^version = \"$rock_version\"" "$dist/$rockspec_name"

# The binary rock: `luarocks make` on a source tree that already holds the library
# (so no cargo runs), into a scratch tree, then `luarocks pack` of what it installed.
src="$stage/rock-src"
mkdir -p "$src/lua/mod_mam" "$src/lua/mod_muc_mam" "$src/lua/mod_storage_mam_native" "$stage/rock-tree"
install -m 0644 lua/mod_mam/*.lua "$src/lua/mod_mam/"
install -m 0644 lua/mod_muc_mam/*.lua "$src/lua/mod_muc_mam/"
install -m 0644 lua/mod_storage_mam_native/*.lua "$src/lua/mod_storage_mam_native/"
install -m 0755 "$stage/mam_native.so" "$src/mam_native.so"
cp "$dist/$rockspec_name" "$src/"
luarocks=(luarocks --lua-version=5.4 --tree="$stage/rock-tree")
(cd "$src" && "${luarocks[@]}" make --no-doc "$rockspec_name" >"$stage/luarocks-make.log" 2>&1) || {
	cat "$stage/luarocks-make.log" >&2
	exit 1
}
(cd "$stage" && "${luarocks[@]}" pack "$name" "$rock_version" >"$stage/luarocks-pack.log" 2>&1) || {
	cat "$stage/luarocks-pack.log" >&2
	exit 1
}
mv "$stage/$name-$rock_version.linux-x86_64.rock" "$dist/"

(cd "$dist" && sha256sum "$(basename "$deb")" "$rockspec_name" "$name-$rock_version.linux-x86_64.rock" \
	"$(basename "$tarball")" >SHA256SUMS)
echo "$dist:"
(cd "$dist" && ls -l "$(basename "$deb")" "$rockspec_name" "$name-$rock_version.linux-x86_64.rock" \
	"$(basename "$tarball")")
