#!/bin/sh
# Offset guessing and the prebuilt conntracker on a second kernel: Debian's 6.1 cloud
# kernel under qemu (TCG), whose struct layouts differ from this machine's 6.18, where
# nf_conntrack is a module and kprobes exist. Boots an initramfs (busybox-static, nft,
# the bench_offsetguess example in --guest mode), which guesses the offsets without BTF,
# starts the prebuilt conntracker (kprobe on __nf_conntrack_hash_insert here), makes one
# DNAT'd connection, and checks that the translation was recorded with the guest
# namespace's inode. Run as root from the repo:
#   sh privileged-loader/tests/offsetguess_qemu.sh
# Needs: qemu-system-x86, busybox-static, nftables, cpio (apt); ~30 MB download.
set -eu
KPKG=${KPKG:-linux-image-6.1.0-50-cloud-amd64-unsigned}
WORK=$(mktemp -d /tmp/offsetguess-qemu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -p privileged-loader --example bench_offsetguess
BIN=target/release/examples/bench_offsetguess

(cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1) || { echo "cannot download $KPKG"; exit 2; }
dpkg -x "$WORK"/*.deb "$WORK/root"
KVER=$(ls "$WORK/root/lib/modules")
KMOD="$WORK/root/lib/modules/$KVER/kernel"

I="$WORK/initramfs"
mkdir -p "$I/bin" "$I/sbin" "$I/lib" "$I/lib64" "$I/proc" "$I/sys" "$I/dev" "$I/mods" "$I/usr/sbin" "$I/tmp"
cp "$(command -v busybox)" "$I/bin/busybox"
cp "$BIN" "$I/guest"
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
PATH=/bin:/usr/sbin /guest --guest 20 &
sleep 15
nc -l -p 8080 127.0.0.1 >/dev/null &
sleep 0.5
echo hello | nc -w 1 10.99.0.1 80
wait %1
echo "GUEST-EXIT \$?"
poweroff -f
INIT
chmod +x "$I/init"
(cd "$I" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$WORK/initrd.gz")

timeout 300 qemu-system-x86_64 -m 1024 -smp 1 -nographic -no-reboot \
  -kernel "$WORK/root/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" 2>&1 | tr -d '\r' | sed -n '/GUEST-START/,/GUEST-EXIT/p' | tee "$WORK/out"
grep -q "attempt prebuilt/offsetguess yes" "$WORK/out" || { echo "FAIL: offset guessing did not succeed"; exit 1; }
NS=$(sed -n 's/^own netns //p' "$WORK/out")
grep -q "entry Entry { original: Tuple { src: 10.99.0.1, .*dst_port: 80, protocol: Tcp }, reply: Tuple { src: 127.0.0.1, src_port: 8080.*netns: $NS }" "$WORK/out" \
  || { echo "FAIL: the DNAT'd connection was not recorded with netns $NS"; exit 1; }
echo "PASS: $KVER: $(sed -n 's/^strategy //p' "$WORK/out") recorded the DNAT translation with guessed offsets"
