#!/usr/bin/env bash
# Install ctbpf on this host: copy the source tree to a prefix (default
# /opt/ctbpf), set it up there with scripts/setup.sh (Debian packages, kernel
# headers, bpffs, .venv) and link /usr/local/bin/ctbpf to the venv's command.
# Running it again updates the copy in place.
#
# Usage: deploy/install.sh [--prefix DIR]        (as root)
#
# It installs no service: deploy/ctbpf.service (see its header) runs
# `ctbpf run` at boot, with interfaces from /etc/default/ctbpf.
set -euo pipefail

PREFIX=/opt/ctbpf
BIN_LINK=/usr/local/bin/ctbpf
MARKER=.ctbpf-install

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#--prefix=}; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (usage: $0 [--prefix DIR])" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root"
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/scripts/setup.sh" ]; then
    die "$SRC does not look like a ctbpf source tree"
fi
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd -P)

if [ "$(cd "$SRC" && pwd -P)" = "$PREFIX" ]; then
    say "using the source tree in place at $PREFIX"
else
    # Only a directory that is empty or that we installed before is cleaned, so
    # a mistaken --prefix (/usr, say) is never wiped. .venv is kept across updates.
    if [ -f "$PREFIX/$MARKER" ]; then
        find "$PREFIX" -mindepth 1 -maxdepth 1 ! -name .venv ! -name "$MARKER" -exec rm -rf {} +
    elif [ -n "$(ls -A "$PREFIX")" ]; then
        die "$PREFIX is not empty and holds no earlier ctbpf install; pick another --prefix"
    fi
    say "copying $SRC to $PREFIX"
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./.vagrant \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' -cf - . \
        | tar -C "$PREFIX" -xf -
    touch "$PREFIX/$MARKER"
fi

bash "$PREFIX/scripts/setup.sh"

[ -x "$PREFIX/.venv/bin/ctbpf" ] || die "$PREFIX/.venv/bin/ctbpf missing after setup"
mkdir -p "$(dirname "$BIN_LINK")"
ln -sfn "$PREFIX/.venv/bin/ctbpf" "$BIN_LINK"
say "linked $BIN_LINK -> $PREFIX/.venv/bin/ctbpf"
say "done: try 'ctbpf run --iface eth0'"
