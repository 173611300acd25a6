#!/usr/bin/env bash
# The main job (README): builds everything, then runs the system end to end on one
# machine with the embedded defaults:
#   1. a throwaway network namespace with an nft DNAT rule and a real listener,
#   2. the privileged loader (root) loading its eBPF objects and serving its socket,
#   3. real connections through the DNAT rule,
#   4. `loaderctl` (as an unprivileged uid) showing the loader's status, the live NAT
#      translations next to `conntrack -L`, and the lock statistics of its maps,
#   5. the reference config service publishing a signed (TUF) config on loopback, and the
#      controller, as uid 65534 with no capabilities, polling it with a bearer token and
#      verifying what it gets.
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

echo "== network namespace $ns with DNAT 10.99.0.1:80 -> 127.0.0.1:8080 (tcp and udp)"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 10.99.0.1/32 dev lo
ip netns exec "$ns" nft -f - <<'NFT'
table ip nat {
  chain output {
    type nat hook output priority -100;
    ip daddr 10.99.0.1 tcp dport 80 dnat to 127.0.0.1:8080
    ip daddr 10.99.0.1 udp dport 53 dnat to 127.0.0.1:5353
  }
}
NFT
ip netns exec "$ns" python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do ip netns exec "$ns" curl -s -o /dev/null http://127.0.0.1:8080/ && break; sleep 0.05; done

# The demo's loader runs inside the namespace so that its ctnetlink dump and destroy
# events cover the namespace's connections too.
sock=$work/run/loader.sock
cat > "$work/loader.toml" <<TOML
[api]
socket = "$sock"
allowed_uids = [0, 65534]
TOML
echo "== starting privileged-loader"
ip netns exec "$ns" "$bin/privileged-loader" run --config "$work/loader.toml" 2> "$work/loader.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "the loader did not start:"; cat "$work/loader.log"; exit 1; }
chmod 0755 "$work" "$work/run"; chmod 0666 "$sock"  # demo only: let uid 65534 reach the socket

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

echo; echo "== remote config: config-service publishes, the unprivileged controller verifies"
repo=$work/repo
"$bin/config-service" init --repo "$repo" >/dev/null
echo '{"conntrack": {"udpv6_enabled": false}}' > "$work/loader-config.json"
"$bin/config-service" publish --repo "$repo" LOADER_CONFIG demo "$work/loader-config.json"
token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf 'demo:%s\n' "$token" > "$work/tokens"; chmod 0600 "$work/tokens"
mkdir -p "$work/controller/state"
printf '%s' "$token" > "$work/controller/token"
cp "$repo/metadata/1.root.json" "$work/controller/root.json"
chown -R 65534:65534 "$work/controller"; chmod 0700 "$work/controller"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/config-service" serve --repo "$repo" --listen "127.0.0.1:$port" --tokens-file "$work/tokens" 2> "$work/service.log" &
pids+=($!)
sleep 0.5
setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$bin/controller" run \
  --state-dir "$work/controller/state" --endpoint "http://127.0.0.1:$port" \
  --token-file "$work/controller/token" --root-file "$work/controller/root.json" \
  --poll-interval-secs 1 2> "$work/controller.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q '"apply_state": *2' "$work/controller/state/status.json" 2>/dev/null && break; sleep 0.1
done
"$bin/controller" status --state-dir "$work/controller/state"
echo; echo "demo finished"
