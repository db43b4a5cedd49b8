#!/usr/bin/env bash
# The five-minute tour on one machine: an origin and two peerdistd nodes in a network
# namespace of their own (so discovery multicasts on its loopback, nowhere else).
# Publish on node A, fetch on node B: the bytes come from A, not from the origin.
# Needs root (for the namespace); runs `make venv` first if the checkout has no .venv yet.
# Usage: sudo examples/tour.sh [FILE]   (without FILE: 50 MB of random data)
set -euo pipefail
usage() { echo "usage: sudo $0 [FILE]" >&2; exit 2; }
[ $# -le 1 ] || usage
if [ $# -eq 1 ]; then
  # Resolved before the cd below, so a relative FILE means what the caller meant.
  [ -f "$1" ] && [ -r "$1" ] || { echo "tour: $1 is not a readable file" >&2; exit 2; }
  FILE=$(realpath -- "$1")
fi
[ "$(id -u)" -eq 0 ] || { echo "tour: needs root to create a network namespace (sudo $0)" >&2; exit 2; }
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
if [ ! -x "$BIN/peerdistd" ]; then
  echo "== no .venv yet: make venv"
  if [ -n "${SUDO_USER:-}" ]; then  # as the user who ran sudo, so the .venv stays theirs
    sudo -u "$SUDO_USER" make venv
  else
    make venv
  fi
fi
WORK=$(mktemp -d /tmp/peerdist-tour.XXXXXX)
NS=peerdist-tour-$$
if [ -z "${FILE:-}" ]; then
  FILE=$WORK/content.bin
  head -c 50000000 /dev/urandom > "$FILE"
fi

in_ns() { ip netns pids "$NS" 2>/dev/null || true; }
cleanup() {
  # The daemons run under `ip netns exec` in subshells: killing the jobs is not enough, so
  # every process left in the tour's namespace is stopped before the namespace goes.
  kill $(jobs -p) 2>/dev/null || true
  local left
  left=$(in_ns)
  if [ -n "$left" ]; then kill $left 2>/dev/null || true; fi
  for _ in $(seq 50); do [ -z "$(in_ns)" ] && break; sleep 0.1; done
  left=$(in_ns)
  if [ -n "$left" ]; then kill -9 $left 2>/dev/null || true; fi
  wait 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up multicast on
inside() { ip netns exec "$NS" "$@"; }  # everything below runs in the tour's namespace
declare -A PIDS
node() {  # node NAME ADDRESS: a daemon listening for peers on ADDRESS:8080
  inside "$BIN/peerdistd" serve --listen "$2:8080" --metrics '' \
    --state-dir "$WORK/$1/state" --cache-dir "$WORK/$1/cache" --socket "$WORK/$1/api.sock" \
    > "$WORK/$1.log" 2>&1 &
  PIDS[$1]=$!
}
node a 127.0.0.1
node b 127.0.0.2
inside "$BIN/python" examples/origin.py "$FILE" --listen 127.0.0.3:8000 \
  > "$WORK/origin.log" 2>&1 &
PIDS[origin]=$!
up() {  # up NAME CHECK...: wait until CHECK succeeds (10 s at most, less if NAME exits)
  local name=$1; shift
  for _ in $(seq 100); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "${PIDS[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "tour: $name did not start:" >&2
  cat "$WORK/$name.log" >&2
  exit 1
}
up a inside "$BIN/peerdist" status --socket "$WORK/a/api.sock"
up b inside "$BIN/peerdist" status --socket "$WORK/b/api.sock"
up origin inside bash -c 'exec 3<>/dev/tcp/127.0.0.3/8000'

echo "== publish on node A"
inside "$BIN/peerdist" publish --socket "$WORK/a/api.sock" "$FILE" --id tour --content-info "$WORK/tour.ci"
echo "== fetch on node B"
inside "$BIN/peerdist" fetch --socket "$WORK/b/api.sock" --content-info "$WORK/tour.ci" \
  --origin "http://127.0.0.3:8000/$(basename "$FILE")" -o "$WORK/fetched.bin"
cmp "$FILE" "$WORK/fetched.bin"
echo "== identical"
echo "== node B's status"
inside "$BIN/peerdist" status --socket "$WORK/b/api.sock"
echo "== origin log (what crossed the 'WAN'):"
cat "$WORK/origin.log"
