#!/bin/sh
# The lock-contention collector on a second kernel: Debian's 6.1 cloud kernel under qemu
# (TCG, 2 vCPUs), where the bucket lock is a raw_spinlock_t, the freelist still has its
# global extralist and data symbols may be listed. Boots an initramfs with the
# bench_lockstats example and checks that every object loads (verifier of 6.1 included)
# and the collector runs with per-CPU ranges. Run as root from the repo:
#   sh privileged-loader/tests/lockstats_qemu.sh
# Needs: qemu-system-x86, busybox-static, cpio (apt); ~30 MB download.
set -eu
KPKG=${KPKG:-linux-image-6.1.0-50-cloud-amd64-unsigned}
WORK=$(mktemp -d /tmp/lockstats-qemu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -p privileged-loader --example bench_lockstats
BIN=target/release/examples/bench_lockstats

(cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1) || { echo "cannot download $KPKG"; exit 2; }
dpkg -x "$WORK"/*.deb "$WORK/root"
KVER=$(ls "$WORK/root/lib/modules")

I="$WORK/initramfs"
mkdir -p "$I/bin" "$I/lib" "$I/lib64" "$I/proc" "$I/sys" "$I/dev"
cp "$(command -v busybox)" "$I/bin/busybox"
cp "$BIN" "$I/bench_lockstats"
for lib in $(ldd "$BIN" | awk '/=>/ {print $3}' | sort -u); do cp -L "$lib" "$I/lib/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$I/lib64/"
cat > "$I/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
echo GUEST-START
ulimit -n 1024 -Hn 4096 2>/dev/null; RUST_LOG=privileged_loader=warn /bench_lockstats 1
echo "GUEST-EXIT $?"
poweroff -f
INIT
chmod +x "$I/init"
(cd "$I" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$WORK/initrd.gz")

timeout 600 qemu-system-x86_64 -m 2048 -smp 2 -nographic -no-reboot \
  -kernel "$WORK/root/boot/vmlinuz-$KVER" -initrd "$WORK/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" 2>&1 | sed -n '/GUEST-START/,/GUEST-EXIT/p' | tee "$WORK/out"

grep -q 'GUEST-EXIT 0' "$WORK/out" || { echo "FAIL: bench_lockstats failed in the guest"; exit 1; }
grep -q 'track_all_maps=true .*state Running' "$WORK/out" || { echo "FAIL: collector not running on $KVER"; exit 1; }
grep -q 'track_all_maps=true .*1001 maps\|track_all_maps=true .*100[0-9] maps' "$WORK/out" || { echo "FAIL: maps not tracked on $KVER"; exit 1; }
echo "PASS: $KVER: lockstats objects load and the collector runs"
