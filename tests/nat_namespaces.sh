#!/usr/bin/env bash
# A real lobby, relay, host and joiner through two NATed homes, in network namespaces:
#
#   sw-wan-PID    "the internet": bridge br0 with the lobby 198.51.100.1 and the relay 198.51.100.2
#     | a0 -- wan0 203.0.113.1   sw-rtrA-PID  nftables masquerade + home-router firewall
#     |                           lan0 10.0.1.1 -- eth0 10.0.1.2  sw-hostA-PID  (statewire serve)
#     | b0 -- wan0 203.0.113.2   sw-rtrB-PID  nftables masquerade + home-router firewall
#                                 lan0 10.0.2.1 -- eth0 10.0.2.2  sw-hostB-PID  (statewire join)
#
# Round 1 joins by code and must punch through both NATs (`path: direct`); round 2 joins with
# --force-relay (`path: relayed`). Needs root, iproute2 (ip, ss) and nft with NAT support; where
# one is missing it prints `SKIP: ...` and exits 0, unless STATEWIRE_REQUIRE_NETNS=1 (CI), which
# turns the skip into a failure. It installs nothing, touches no address of the root namespace and
# deletes everything it made on exit. Usage: tests/nat_namespaces.sh (from anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."

ID=$$
NS_WAN="sw-wan-$ID"
NS_RTR_A="sw-rtrA-$ID"
NS_RTR_B="sw-rtrB-$ID"
NS_HOST_A="sw-hostA-$ID"
NS_HOST_B="sw-hostB-$ID"
LOBBY=198.51.100.1:7800
RELAY=198.51.100.2:3478
HOST_UDP=10.0.1.2:7777
BIN=target/release/statewire

NAMESPACES=()
PIDS=()
LOGDIR=""
REPORTED=0 # 1 once a SKIP/FAIL/OK line has said why we exit

say() { echo "nat_namespaces: $*"; }
oneline() { tr -s '\n' ' ' <"$1" | sed 's/ *$//'; }

show_logs() {
  [ -n "$LOGDIR" ] || return 0
  local f
  for f in "$LOGDIR"/*.log; do
    [ -s "$f" ] || continue
    echo "---- $(basename "$f") (last 40 lines)" >&2
    tail -n 40 "$f" >&2
  done
}

fail() {
  REPORTED=1
  echo "nat_namespaces: FAIL: $*" >&2
  show_logs
  exit 1
}

# A capability this machine lacks: not this project's fault, so not a CI failure, unless asked.
skip() {
  REPORTED=1
  if [ "${STATEWIRE_REQUIRE_NETNS:-0}" = 1 ]; then
    echo "nat_namespaces: FAIL: $* (STATEWIRE_REQUIRE_NETNS=1: required here, not skipped)" >&2
    exit 1
  fi
  echo "SKIP: nat_namespaces: $*"
  exit 0
}

cleanup() {
  local rc=$? pid ns
  trap - EXIT
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # Anything still running inside our own namespaces was started by this script.
  for ns in "${NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -9 "$pid" 2>/dev/null || true
    done
  done
  # Deleting a namespace deletes its veth ends and bridge, and so the peers of those veths.
  for ns in "${NAMESPACES[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  if [ -n "$LOGDIR" ]; then rm -rf "$LOGDIR"; fi
  if [ "$rc" != 0 ] && [ "$REPORTED" = 0 ]; then
    echo "nat_namespaces: FAIL: a command failed (status $rc); see above" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'REPORTED=1; echo "nat_namespaces: interrupted" >&2; exit 130' INT TERM

# ---- prerequisites (skip, never fail, where the machine cannot do this)
if [ "$(id -u)" != 0 ]; then
  skip "not root (uid $(id -u)): network namespaces and nftables need root"
fi
for tool in ip ss nft timeout; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    case "$tool" in
      nft) skip "no nft on PATH (Debian package nftables)" ;;
      timeout) skip "no timeout on PATH (coreutils)" ;;
      *) skip "no $tool on PATH (Debian package iproute2)" ;;
    esac
  fi
done
LOGDIR="$(mktemp -d)"

add_ns() {
  if ! ip netns add "$1" 2>"$LOGDIR/netns.err"; then
    skip "ip netns add refused: $(oneline "$LOGDIR/netns.err")"
  fi
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
}
add_ns "$NS_WAN"
add_ns "$NS_RTR_A"
add_ns "$NS_RTR_B"
add_ns "$NS_HOST_A"
add_ns "$NS_HOST_B"

# A home router: masquerade towards the WAN and, like every home router, drop unsolicited packets
# from the WAN. The drop matters for hole punching: a peer's punch that arrives before our own
# first packet to it is dropped before conntrack confirms an entry for it; a confirmed entry would
# hold the reply tuple our later packet needs, and masquerade would then pick another source port.
router_rules() {
  cat <<'EOF'
table ip nat {
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }
}
table ip filter {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" drop
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
  }
}
EOF
}
for ns in "$NS_RTR_A" "$NS_RTR_B"; do
  if ! router_rules | ip netns exec "$ns" nft -f - 2>"$LOGDIR/nft.err"; then
    skip "nft nat/masquerade refused by the kernel: $(oneline "$LOGDIR/nft.err")"
  fi
done

# ---- topology (every link is made inside the namespaces; the root namespace gets nothing)
veth() { # veth NS_A IF_A NS_B IF_B
  if ! ip -n "$1" link add "$2" type veth peer name "$4" netns "$3" 2>"$LOGDIR/veth.err"; then
    skip "cannot create a veth pair: $(oneline "$LOGDIR/veth.err")"
  fi
}
if ! ip -n "$NS_WAN" link add br0 type bridge 2>"$LOGDIR/bridge.err"; then
  skip "cannot create a bridge: $(oneline "$LOGDIR/bridge.err")"
fi
veth "$NS_WAN" a0 "$NS_RTR_A" wan0
veth "$NS_WAN" b0 "$NS_RTR_B" wan0
veth "$NS_RTR_A" lan0 "$NS_HOST_A" eth0
veth "$NS_RTR_B" lan0 "$NS_HOST_B" eth0

ip -n "$NS_WAN" link set a0 master br0
ip -n "$NS_WAN" link set b0 master br0
for a in 198.51.100.1/24 198.51.100.2/24 203.0.113.254/24; do
  ip -n "$NS_WAN" addr add "$a" dev br0
done
for ifc in br0 a0 b0; do ip -n "$NS_WAN" link set "$ifc" up; done

home() { # home ROUTER_NS HOST_NS WAN_ADDR LAN_PREFIX
  ip -n "$1" addr add "$3/24" dev wan0
  ip -n "$1" addr add "$4.1/24" dev lan0
  ip -n "$1" link set wan0 up
  ip -n "$1" link set lan0 up
  ip -n "$1" route add default via 203.0.113.254
  ip netns exec "$1" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  ip -n "$2" addr add "$4.2/24" dev eth0
  ip -n "$2" link set eth0 up
  ip -n "$2" route add default via "$4.1"
}
home "$NS_RTR_A" "$NS_HOST_A" 203.0.113.1 10.0.1
home "$NS_RTR_B" "$NS_HOST_B" 203.0.113.2 10.0.2

# ---- NAT check: the internet must see each home as its router's address, never a 10.x one
ip netns exec "$NS_WAN" nft -f - <<'EOF'
table ip swcheck {
  counter from_a {}
  counter from_b {}
  counter from_private {}
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 9 ip saddr 203.0.113.1 counter name "from_a"
    udp dport 9 ip saddr 203.0.113.2 counter name "from_b"
    udp dport 9 ip saddr 10.0.0.0/8 counter name "from_private"
  }
}
EOF
for _ in 1 2 3; do
  ip netns exec "$NS_HOST_A" bash -c 'echo nat-check >/dev/udp/198.51.100.1/9' || true
  ip netns exec "$NS_HOST_B" bash -c 'echo nat-check >/dev/udp/198.51.100.1/9' || true
done
packets() {
  ip netns exec "$NS_WAN" nft list counter ip swcheck "$1" |
    sed -n 's/.*packets \([0-9]*\).*/\1/p' | head -n 1
}
seen_a="$(packets from_a)"
seen_b="$(packets from_b)"
seen_private="$(packets from_private)"
if [ "${seen_a:-0}" != 3 ] || [ "${seen_b:-0}" != 3 ] || [ "${seen_private:-0}" != 0 ]; then
  fail "NAT check: the wan namespace saw ${seen_a:-0}/3 packets from 203.0.113.1," \
    "${seen_b:-0}/3 from 203.0.113.2 and ${seen_private:-0} from 10.0.0.0/8 (want 3, 3, 0)"
fi
ip netns exec "$NS_WAN" nft delete table ip swcheck
say "topology up, NAT check passed (the wan side sees 203.0.113.1 and 203.0.113.2 only)"

# ---- the CLI
say "building the CLI (cargo build --release -p statewire-cli)"
cargo build --release -q -p statewire-cli || fail "cargo build --release -p statewire-cli failed"
for cmd in lobby relay; do
  "$BIN" "$cmd" --help >/dev/null 2>&1 || fail "$BIN has no '$cmd' command"
done
"$BIN" serve --help 2>/dev/null | grep -q -- '--lobby' || fail "$BIN serve has no --lobby"
join_help="$("$BIN" join --help 2>/dev/null || true)"
for flag in --lobby --code --force-relay; do
  grep -q -- "$flag" <<<"$join_help" || fail "$BIN join has no $flag"
done

# start NAME NS CMD...: a bounded background process, logged, killed on exit.
start() {
  local name=$1 ns=$2
  shift 2
  timeout 300 ip netns exec "$ns" "$@" >"$LOGDIR/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_udp NAME NS PORT PID: until PID's socket is bound (10 s at most).
wait_udp() {
  local _
  for _ in $(seq 100); do
    if ip netns exec "$2" ss -Hlun "sport = :$3" | grep -q .; then return 0; fi
    kill -0 "$4" 2>/dev/null || fail "$1 exited before binding UDP port $3"
    sleep 0.1
  done
  fail "$1 did not bind UDP port $3 within 10 s"
}

"$BIN" keygen --out "$LOGDIR/relay.key" >/dev/null
start relay "$NS_WAN" "$BIN" relay --bind "$RELAY" --key-file "$LOGDIR/relay.key"
RELAY_PID=$!
start lobby "$NS_WAN" "$BIN" lobby --bind "$LOBBY" --relay "$RELAY" --relay-key "$LOGDIR/relay.key"
LOBBY_PID=$!
wait_udp relay "$NS_WAN" "${RELAY##*:}" "$RELAY_PID"
wait_udp lobby "$NS_WAN" "${LOBBY##*:}" "$LOBBY_PID"

# round LABEL WANT_PATH [JOIN FLAGS...]: a host in home A, a joiner in home B by join code.
FIRST=""
round() {
  local label=$1 want=$2 code="" serve_pid _
  shift 2
  start "serve-$label" "$NS_HOST_A" "$BIN" serve --udp "$HOST_UDP" --lobby "$LOBBY" \
    --name "netns-$label" --public --ticks 240 --quiet-ticks 30 --entities 200
  serve_pid=$!
  for _ in $(seq 300); do
    code="$(sed -n 's/.*join code: *\([A-Za-z0-9-]*\).*/\1/p' "$LOGDIR/serve-$label.log" |
      head -n 1)"
    [ -n "$code" ] && break
    kill -0 "$serve_pid" 2>/dev/null || fail "$label: serve exited before printing a join code"
    sleep 0.1
  done
  [ -n "$code" ] || fail "$label: serve printed no 'join code:' within 30 s"
  say "$label: host in $NS_HOST_A registered, join code $code"

  local rc=0
  timeout 60 ip netns exec "$NS_HOST_B" "$BIN" join --lobby "$LOBBY" --code "$code" \
    --timeout-secs 50 "$@" >"$LOGDIR/join-$label.log" 2>&1 || rc=$?
  if [ "$rc" = 124 ]; then fail "$label: join still running after 60 s"; fi
  [ "$rc" = 0 ] || fail "$label: join exited with status $rc"
  grep -q "path: $want" "$LOGDIR/join-$label.log" ||
    fail "$label: the join did not report 'path: $want'"
  grep -q 'converged: true' "$LOGDIR/join-$label.log" ||
    fail "$label: the join exited 0 without 'converged: true'"
  FIRST="$(grep -o 'first snapshot after [0-9.]* *ms' "$LOGDIR/join-$label.log" | head -n 1)" ||
    fail "$label: the join printed no 'first snapshot after ... ms'"
  say "$label: path: $want, $FIRST"

  rc=0
  wait "$serve_pid" || rc=$?
  [ "$rc" = 0 ] || fail "$label: serve exited with status $rc"
}

round direct direct
DIRECT="$FIRST"
round relayed relayed --force-relay
RELAYED="$FIRST"

REPORTED=1
say "OK (direct: $DIRECT, relayed: $RELAYED)"
