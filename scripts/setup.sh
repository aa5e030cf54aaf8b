#!/usr/bin/env bash
# Prepare this host for ctbpf: Debian packages, kernel headers for BCC, bpffs,
# and the project's virtualenv (.venv). Safe to run again: a second run checks
# a few stamps and returns in about a second.
#
# Usage: scripts/setup.sh        (as root, on Debian 12 or a Debian derivative)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
SYS_PYTHON=/usr/bin/python3

PACKAGES=(python3-bpfcc iputils-ping bpftool iproute2 nftables conntrack python3-venv
          python3-pip make hping3 tcpdump procps ethtool kmod
          libatomic1    # ctbpf/datapath/ringbuf.py: the ring consumer's memory fences (arm64, ppc64le, s390x)
          prometheus vagrant systemd    # tests/deploy: promtool, vagrant validate (and ruby), systemd-analyze
          python3-numpy    # ctbpf list and top: the table decoded by whole batches (and bench arrays)
          netsniff-ng python3-matplotlib)   # bench: trafgen, plots
PACKAGE_LIST="${PACKAGES[*]}"   # before any kernel-headers package is added

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- preconditions ---------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
fi
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*) ;;
    *) die "needs Debian 12 or a Debian derivative (found: ${PRETTY_NAME:-unknown})" ;;
esac
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
    die "apt-get/dpkg-query not found: not a Debian-like system"
fi

# --- kernel headers for BCC ------------------------------------------------
# BCC compiles against /lib/modules/$(uname -r)/build. A kernel without
# headers gets them from Debian: its own linux-headers-$(uname -r) when Debian
# has that package, else (as on the dev machine's 6.18) Debian's newest generic
# headers, with both build and source links made by hand: BCC needs the
# -common tree as well as the -$ARCH one. Our programs use only UAPI structures.
KREL=$(uname -r)
KDIR="/lib/modules/$KREL"
ARCH=$(dpkg --print-architecture)
need_headers=0
[ -e "$KDIR/build" ] || { need_headers=1; PACKAGES+=("linux-headers-$ARCH"); }

# --- Debian packages -------------------------------------------------------
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for p in "${PACKAGES[@]}"; do
    # Status-Abbrev is like "ii ": the second letter 'i' means installed.
    grep -qE "^$p .i" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update >/dev/null || die "apt-get update failed"
    apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}"
else
    say "Debian packages: all present"
fi

# A Debian kernel has an exact headers package that ships both links itself.
if [ "$need_headers" -eq 1 ] && apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
    say "installing linux-headers-$KREL"
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 install \
        --no-install-recommends "linux-headers-$KREL" >/dev/null || true
fi
if [ "$need_headers" -eq 1 ] && [ ! -e "$KDIR/build" ]; then
    hdr=$(find /usr/src -maxdepth 1 -type d -name "linux-headers-*-$ARCH" | sort -V | tail -n 1)
    [ -n "$hdr" ] || die "no /usr/src/linux-headers-*-$ARCH after installing linux-headers-$ARCH"
    ver=${hdr#/usr/src/linux-headers-}
    ver=${ver%-"$ARCH"}
    common="/usr/src/linux-headers-$ver-common"
    [ -d "$common" ] || die "missing $common (expected beside $hdr)"
    mkdir -p "$KDIR"
    ln -sfn "$hdr" "$KDIR/build"
    ln -sfn "$common" "$KDIR/source"
    say "kernel $KREL has no headers: linked $KDIR/{build,source} to Debian $ver headers"
fi

# --- bpffs -----------------------------------------------------------------
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs at /sys/fs/bpf"
    say "mounted bpffs at /sys/fs/bpf"
fi

# --- virtualenv ------------------------------------------------------------
"$SYS_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$SYS_PYTHON is older than 3.11: use Debian 12 or newer"

stamp="$VENV/.ctbpf-setup.stamp"
want=$( { cat "$ROOT/pyproject.toml"; echo "$PACKAGE_LIST"; echo "$ROOT";
          "$SYS_PYTHON" -V; } | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "virtualenv .venv: up to date"
else
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtualenv .venv (with Debian's system site-packages, for bcc)"
        "$SYS_PYTHON" -m venv --system-site-packages "$VENV" || die "venv creation failed"
    fi
    say "installing ctbpf and test dependencies into .venv (pip install -e .[test])"
    rm -f "$stamp"
    (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]') \
        || die "pip install -e '.[test]' failed (see pip output above)"
    "$VENV/bin/python" -c 'import bcc, pyroute2, prometheus_client' 2>/dev/null \
        || die ".venv cannot import bcc, pyroute2 and prometheus_client"
    echo "$want" >"$stamp"
fi

say "done"
