#!/usr/bin/env bash
# The main job (README): builds everything, then runs the system end to end on one
# machine with the embedded defaults:
#   1. a throwaway network namespace with an nft DNAT rule and a real listener,
#   2. the privileged loader (root) loading its eBPF objects and serving its socket,
#   3. real connections through the DNAT rule,
#   4. `loaderctl` (as an unprivileged uid) showing the loader's status, the live NAT
#      translations next to `conntrack -L`, and the lock statistics of its maps,
#   5. the whole remote-config loop: the reference config service publishes a signed (TUF)
#      CONNTRACK config on loopback; the controller, as uid 65534 with no capabilities,
#      polls it with a bearer token, verifies it and pushes it to the loader, which
#      re-verifies it against its own pinned root, checks its allow-list and reloads the
#      conntracker (IPv6 UDP NAT entries stop being recorded, the map gets its new size);
#      the service hears "acknowledged"; then a config the loader's allow-list forbids is
#      published, the error reaches the service and the loader keeps the previous config;
#      last, a few lines of the controller's Prometheus /metrics.
# Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it loads eBPF and creates a netns)" >&2; exit 2; }

bash deploy/install-deps.sh
echo "== building (release)"
cargo build --release --bins --locked
bin=$PWD/target/release

work=$(mktemp -d /tmp/ebpf-demo.XXXXXX)
ns=ebpf-demo-$$
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== network namespace $ns with DNAT 10.99.0.1:80 -> 127.0.0.1:8080 (tcp and udp), [fd99::1]:53 -> [::1]:5353 (udp)"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 10.99.0.1/32 dev lo
ip -n "$ns" addr add fd99::1/128 dev lo nodad
ip netns exec "$ns" nft -f - <<'NFT'
table ip nat {
  chain output {
    type nat hook output priority -100;
    ip daddr 10.99.0.1 tcp dport 80 dnat to 127.0.0.1:8080
    ip daddr 10.99.0.1 udp dport 53 dnat to 127.0.0.1:5353
  }
}
table ip6 nat {
  chain output {
    type nat hook output priority -100;
    ip6 daddr fd99::1 udp dport 53 dnat to [::1]:5353
  }
}
NFT
ip netns exec "$ns" python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do ip netns exec "$ns" curl -s -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.05; done

# The remote-config repository (keys, signed metadata): the loader pins its first root.
repo=$work/repo
"$bin/config-service" init --repo "$repo" >/dev/null
cp "$repo/metadata/1.root.json" "$work/loader-root.json"

# The demo's loader runs inside the namespace so that its ctnetlink dump and destroy
# events cover the namespace's connections too. Its allow-list caps what remote config
# may ask for.
sock=$work/run/loader.sock
cat > "$work/loader.toml" <<TOML
[api]
socket = "$sock"
socket_group = 65534
allowed_uids = [0, 65534]

[remote_config]
root_file = "$work/loader-root.json"

[remote_config.allow]
max_conntrack_entries = 262144
TOML
echo "== starting privileged-loader"
ip netns exec "$ns" "$bin/privileged-loader" run --config "$work/loader.toml" 2> "$work/loader.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "the loader did not start:"; cat "$work/loader.log"; exit 1; }
chmod 0755 "$work" "$work/run"  # demo only: let uid 65534 reach the socket (0660, group 65534)

echo "== making connections through the DNAT rule"
for _ in 1 2 3; do ip netns exec "$ns" curl -s -o /dev/null http://10.99.0.1/ || true; done
ip netns exec "$ns" python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"hi", ("10.99.0.1", 53))'
sleep 0.5

ctl() { setpriv --reuid=65534 --regid=65534 --clear-groups "$bin/loaderctl" --socket "$sock" "$@"; }
echo; echo "== loaderctl status (as uid 65534, no capabilities)"
ctl status
echo; echo "== loaderctl conntrack list"
ctl conntrack list
echo; echo "== conntrack -L (the kernel's own view, for comparison)"
ip netns exec "$ns" conntrack -L 2>/dev/null | grep -E 'dport=(80|53) ' || true
echo; echo "== loaderctl conntrack list --json | jq length"
ctl conntrack list --json | jq length
echo; echo "== loaderctl lockstats"
ctl lockstats
echo; echo "== loaderctl audit (the loader's privileges, checked against docs/privilege-audit.md)"
ctl audit

# An IPv6 UDP echo service behind the DNAT rule, so that each exchange is a full flow.
ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::1", 5353))
while True:
    data, peer = s.recvfrom(2048); s.sendto(data, peer)' &
pids+=($!)
udp6() {  # one IPv6 UDP exchange through the DNAT rule, from a new source port
  ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"hi", ("fd99::1", 53)); s.recvfrom(16); print(s.getsockname()[1])' 2>/dev/null
}
listed_udp6() { ctl conntrack list --json | jq -r '.[] | select(.original.proto == "udp" and .original.dst == "fd99::1") | .original.sport'; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" && return 0; sleep 0.2; done
  echo "demo: timed out after ${secs}s waiting for $what" >&2; return 1
}

echo; echo "== IPv6 UDP NAT before any remote config (udpv6_enabled = true in the file)"
wait_for 10 "the IPv6 UDP echo service" udp6 >/dev/null
port6=$(udp6); sleep 0.3
echo "sent from port $port6; the loader lists IPv6 UDP entries from ports: $(listed_udp6 | tr '\n' ' ')"

echo; echo "== remote config: the service publishes, the controller verifies and pushes, the loader re-verifies and applies"
printf 'demo:%s\n' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > "$work/tokens"; chmod 0600 "$work/tokens"
mkdir -p "$work/controller/state"
cut -d: -f2 "$work/tokens" | tr -d '\n' > "$work/controller/token"
cp "$repo/metadata/1.root.json" "$work/controller/root.json"
chown -R 65534:65534 "$work/controller"; chmod 0700 "$work/controller"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); metrics_port=$(free_port)
"$bin/config-service" serve --repo "$repo" --listen "127.0.0.1:$port" --tokens-file "$work/tokens" \
  --request-log "$work/requests.jsonl" 2> "$work/service.log" &
pids+=($!)
sleep 0.5
CONTROLLER_LOADER__SOCKET="$sock" CONTROLLER_METRICS__LISTEN="127.0.0.1:$metrics_port" \
  setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$bin/controller" run \
  --state-dir "$work/controller/state" --endpoint "http://127.0.0.1:$port" --plaintext-for-development \
  --token-file "$work/controller/token" --root-file "$work/controller/root.json" \
  --poll-interval-secs 1 2> "$work/controller.log" &
controller_pid=$!
pids+=("$controller_pid")

echo '{"udpv6_enabled": false, "max_entries": 32768}' > "$work/conntrack.json"
echo "publishing CONNTRACK demo v1: $(cat "$work/conntrack.json")"
"$bin/config-service" publish --repo "$repo" CONNTRACK demo "$work/conntrack.json"
remote_source() { [ "$(ctl config --json | jq -r '.values["conntrack.udpv6_enabled"].source')" = remote ]; }
wait_for 30 "the loader to apply the config" remote_source
echo; echo "== loaderctl config (effective values and where each came from)"
ctl config
echo; echo "== the conntracker after the reload"
ctl status --json | jq -c '.modules[] | select(.name == "conntrack") | {state, strategy, maps}'
port6=$(udp6); sleep 0.3
echo "IPv6 UDP sent from port $port6; the kernel has it:"
ip netns exec "$ns" conntrack -L -f ipv6 -p udp 2>/dev/null | grep "sport=$port6 " || true
if listed_udp6 | grep -qx "$port6"; then echo "the loader lists it (unexpected)"; else echo "the loader does not record it: udpv6_enabled = false is in force"; fi

reported() {  # reported VERSION STATE: the service heard STATE for config demo at VERSION
  jq -e --argjson v "$1" --argjson s "$2" 'select(.config_states[]? | .id == "demo" and .version == $v and .apply_state == $s)' \
    "$work/requests.jsonl" >/dev/null 2>&1
}
wait_for 30 "the service to hear acknowledged" reported 1 2
echo; echo "== the service's view (the last request's config states: 2 = acknowledged, 3 = error)"
tail -n 1 "$work/requests.jsonl" | jq -c '.config_states'

echo; echo "== publishing a config the loader's allow-list forbids (max_entries above its cap of 262144)"
echo '{"max_entries": 10000000}' > "$work/conntrack.json"
"$bin/config-service" publish --repo "$repo" CONNTRACK demo "$work/conntrack.json"
wait_for 30 "the service to hear the error" reported 2 3
tail -n 1 "$work/requests.jsonl" | jq -c '.config_states[] | select(.id == "demo") | {version, apply_state, apply_error}'
echo "the loader keeps the previous config:"
ctl config --json | jq -c '{max_entries: .values["conntrack.max_entries"], udpv6_enabled: .values["conntrack.udpv6_enabled"]}'

echo; echo "== controller audit (uid, capabilities, no_new_privs, seccomp and sockets of the running controller)"
"$bin/controller" audit --pid "$controller_pid"
echo; echo "== controller status"
"$bin/controller" status --state-dir "$work/controller/state"
echo; echo "== a few lines of the controller's /metrics (http://127.0.0.1:$metrics_port/metrics)"
curl -s "http://127.0.0.1:$metrics_port/metrics" \
  | grep -E '^(controller_config_apply_states|controller_polls_total|loader_module_state|loader_conntrack_(max_)?entries)' | grep -v ' 0$' | head -n 12 || true
echo; echo "demo finished"
