#!/bin/bash
# Test layer 4 (DESIGN.md): real libraries. Builds the corpus into OUTDIR:
#   OUTDIR/archives/LIB.a         a copy of the Debian static archive each driver needs
#   OUTDIR/drivers/NAME.o         the driver, gcc -c -O2 -g (Debian's default PIE code)
#   OUTDIR/native/NAME            the driver linked natively: gcc NAME.o LIB.a HOST-LIBS
#   OUTDIR/native/NAME.expected   its stdout, the oracle for `kiln run` on this machine
#   OUTDIR/native/NAME.status     its exit status
# Debian updates these libraries: the oracle is always a native build made here, never stored output.
# Missing Debian packages are installed (needs root and the package registry) unless --no-install.
# Usage: setup.sh OUTDIR [--no-install]
set -euo pipefail
OUT=${1:?usage: setup.sh OUTDIR [--no-install]}
INSTALL=yes
[ "${2:-}" = "--no-install" ] && INSTALL=no
HERE=$(cd "$(dirname "$0")" && pwd)
MANIFEST="$HERE/manifest.tsv"

entries() { grep -v '^#' "$MANIFEST" | grep -v '^[[:space:]]*$'; }

for tool in gcc dpkg-query; do
  command -v "$tool" >/dev/null || { echo "setup.sh: '$tool' is not installed" >&2; exit 1; }
done

PKGS=$(entries | cut -f2 | sort -u | tr '\n' ' ')
missing=()
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$INSTALL" = no ]; then
    echo "setup.sh: missing Debian packages: ${missing[*]} (install them: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: missing Debian packages: ${missing[*]}; installing needs root: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || { echo "setup.sh: apt-get update failed" >&2; exit 1; }
  apt-get install -y -qq "${missing[@]}" >&2 || { echo "setup.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

mkdir -p "$OUT/archives" "$OUT/drivers" "$OUT/native"
entries | while IFS=$'\t' read -r name pkg ar libs; do
  [ -f "$ar" ] || { echo "setup.sh: $ar (package $pkg) does not exist" >&2; exit 1; }
  cp -f "$ar" "$OUT/archives/"
  gcc -c -O2 -g -o "$OUT/drivers/$name.o" "$HERE/drivers/driver_$name.c"
  # shellcheck disable=SC2086 # $libs is a list of flags
  gcc -o "$OUT/native/$name" "$OUT/drivers/$name.o" "$OUT/archives/$(basename "$ar")" $libs
  status=0
  "$OUT/native/$name" > "$OUT/native/$name.expected" </dev/null || status=$?
  echo "$status" > "$OUT/native/$name.status"
  echo "$name: status $status: $(head -c 300 "$OUT/native/$name.expected")"
done
