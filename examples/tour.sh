#!/usr/bin/env bash
# The five-minute tour on one machine: an origin and two peerdistd nodes in a network
# namespace of their own (so discovery multicasts on its loopback, nowhere else).
# Publish on node A, fetch on node B: the bytes come from A, not from the origin.
# Needs root (for the namespace) and `make venv` done. Usage: sudo examples/tour.sh [FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
WORK=$(mktemp -d /tmp/peerdist-tour.XXXXXX)
NS=peerdist-tour-$$
FILE=${1:-$WORK/content.bin}
[ -e "$FILE" ] || head -c 50000000 /dev/urandom > "$FILE"

cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up multicast on
node() {  # node NAME ADDRESS: a daemon listening for peers on ADDRESS:8080
  ip netns exec "$NS" "$BIN/peerdistd" serve --listen "$2:8080" --metrics '' \
    --state-dir "$WORK/$1/state" --cache-dir "$WORK/$1/cache" --socket "$WORK/$1/api.sock" \
    > "$WORK/$1.log" 2>&1 &
}
node a 127.0.0.1
node b 127.0.0.2
ip netns exec "$NS" "$BIN/python" examples/origin.py "$FILE" --listen 127.0.0.3:8000 \
  > "$WORK/origin.log" 2>&1 &
for n in a b; do  # wait until both APIs answer
  for _ in $(seq 100); do "$BIN/peerdist" status --socket "$WORK/$n/api.sock" >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "== publish on node A"
"$BIN/peerdist" publish --socket "$WORK/a/api.sock" "$FILE" --id tour --content-info "$WORK/tour.ci"
echo "== fetch on node B"
"$BIN/peerdist" fetch --socket "$WORK/b/api.sock" --content-info "$WORK/tour.ci" \
  --origin "http://127.0.0.3:8000/$(basename "$FILE")" -o "$WORK/fetched.bin"
cmp "$FILE" "$WORK/fetched.bin" && echo "== identical"
echo "== node B's status"
"$BIN/peerdist" status --socket "$WORK/b/api.sock"
echo "== origin log (what crossed the 'WAN'):"
cat "$WORK/origin.log"
