#!/bin/sh
# The CO-RE conntracker on a second kernel: Debian's 6.1 cloud kernel under qemu (TCG),
# where nf_conntrack is a module, kprobes exist and fentry cannot reach module functions.
# Boots an initramfs (busybox-static, nft, the conntrack_strategy example), sets up a
# DNAT rule on the guest's loopback, makes one connection through it, and checks that
# the conntracker chose kprobe and recorded the translation; then boots again allowing
# only the kprobe/kretprobe pair on __nf_conntrack_confirm, then only tp_btf, and checks
# the same each time. Run as root from the repo:
#   sh privileged-loader/tests/conntrack_qemu.sh
# Needs: qemu-system-x86, busybox-static, nftables, cpio (apt); ~30 MB download.
set -eu
KPKG=${KPKG:-linux-image-6.1.0-50-cloud-amd64-unsigned}
WORK=$(mktemp -d /tmp/conntrack-qemu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -p privileged-loader --example conntrack_strategy
BIN=target/release/examples/conntrack_strategy

(cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1) || { echo "cannot download $KPKG"; exit 2; }
dpkg -x "$WORK"/*.deb "$WORK/root"
KVER=$(ls "$WORK/root/lib/modules")
KMOD="$WORK/root/lib/modules/$KVER/kernel"

I="$WORK/initramfs"
mkdir -p "$I/bin" "$I/lib" "$I/lib64" "$I/proc" "$I/sys" "$I/dev" "$I/mods" "$I/usr/sbin"
cp "$(command -v busybox)" "$I/bin/busybox"
cp "$BIN" "$I/conntrack_strategy"
cp /usr/sbin/nft "$I/usr/sbin/nft"
for lib in $( (ldd "$BIN"; ldd /usr/sbin/nft) | awk '/=>/ {print $3}' | sort -u); do cp -L "$lib" "$I/lib/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$I/lib64/"
MODS="libcrc32c nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack nfnetlink nf_conntrack_netlink nf_tables nf_nat nft_chain_nat nft_nat"
for m in $MODS; do cp "$(find "$KMOD" -name "$m.ko" | head -1)" "$I/mods/"; done
printf 'table ip nat {\n  chain output {\n    type nat hook output priority -100;\n    ip daddr 10.99.0.1 tcp dport 80 dnat to 127.0.0.1:8080\n  }\n}\n' > "$I/rules.nft"
cat > "$I/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
for m in $MODS; do insmod /mods/\$m.ko || echo "insmod \$m failed"; done
ip link set lo up; ip addr add 10.99.0.1/32 dev lo
/usr/sbin/nft -f /rules.nft
echo GUEST-START
/conntrack_strategy --hold 6 \$(cat /proc/cmdline | tr ' ' '\\n' | sed -n 's/^ct_strategies=/--strategies /p') &
sleep 4
nc -l -p 8080 127.0.0.1 >/dev/null &
sleep 0.5
echo hello | nc -w 1 10.99.0.1 80
wait %1
echo "GUEST-EXIT \$?"
poweroff -f
INIT
chmod +x "$I/init"
(cd "$I" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$WORK/initrd.gz")

# boot <strategies or "default"> <attempt line that must say yes>
boot() {
  extra=""; [ "$1" = default ] || extra="ct_strategies=$1"
  timeout 300 qemu-system-x86_64 -m 1024 -smp 1 -nographic -no-reboot \
    -kernel "$WORK/root/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 $extra" 2>&1 | sed -n '/GUEST-START/,/GUEST-EXIT/p' | tee "$WORK/out"
  grep -q "yes $2" "$WORK/out" || { echo "FAIL ($1): $2 did not attach"; exit 1; }
  grep -q 'entry Entry { original: Tuple { src: 10.99.0.1, .*dst_port: 80, protocol: Tcp }, reply: Tuple { src: 127.0.0.1, src_port: 8080' "$WORK/out" \
    || { echo "FAIL ($1): the DNAT'd connection was not recorded"; exit 1; }
  echo "PASS: $KVER, strategies $1: $2 recorded the DNAT translation"
}
boot default "kprobe/__nf_conntrack_hash_insert"
boot kprobe_confirm "kprobe+kretprobe/__nf_conntrack_confirm"
boot tp_btf "tp_btf/net_dev_queue"
