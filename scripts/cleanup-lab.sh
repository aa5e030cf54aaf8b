#!/bin/sh
# Remove network namespaces left behind by crashed ctbpf labs (ctbpf/lab/netns.py).
#
# Usage: scripts/cleanup-lab.sh [--force] [--dry-run]
#
# Only namespaces named ctlXXXXX-cli, ctlXXXXX-rtr or ctlXXXXX-srv (X a
# lowercase hex digit) are touched: the processes inside them are killed and
# the namespaces deleted, which deletes their veths too. A lab whose owner
# process is still alive (/run/ctbpf-lab/<prefix>.pid) is kept unless --force.
# Exit status: 0 when nothing stale remains, 1 otherwise.
set -u

PATTERN='^ctl[0-9a-f]{5}-(cli|rtr|srv)$'
RUN_DIR=/run/ctbpf-lab
force=0
dry=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --dry-run|-n) dry=1 ;;
        -h|--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "cleanup-lab.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ] && [ "$dry" -eq 0 ]; then
    echo "cleanup-lab.sh: needs root" >&2
    exit 1
fi

# "name" or "name (id: N)": keep the first field, then only our names.
names=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "$PATTERN" || true)
status=0
for name in $names; do
    prefix=${name%-*}
    if [ "$force" -eq 0 ] && [ -r "$RUN_DIR/$prefix.pid" ]; then
        owner=$(cat "$RUN_DIR/$prefix.pid" 2>/dev/null)
        case "$owner" in
            ''|*[!0-9]*) ;;
            *) if kill -0 "$owner" 2>/dev/null; then
                   echo "kept $name (lab owned by live pid $owner)"
                   continue
               fi ;;
        esac
    fi
    if [ "$dry" -eq 1 ]; then
        echo "would remove $name"
        continue
    fi
    for pid in $(ip netns pids "$name" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if ip netns del "$name"; then
        echo "removed $name"
        rm -f "$RUN_DIR/$prefix.pid"
    else
        status=1
    fi
done
exit $status
