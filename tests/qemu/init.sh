#!/bin/busybox sh
# /init of the qemu matrix's initramfs (PID 1 in the guest, busybox sh).
#
# Prepares what the tests expect of a normal root shell (proc, sys, devtmpfs, bpffs,
# debugfs, tracefs, tmpfs on /run for `ip netns`, a world-writable /tmp, loopback up, the netfilter
# modules loaded), runs tests/qemu/suite.sh with its markers on the second serial port
# (/dev/ttyS1, a file on the host, free of kernel messages) and powers the guest off.
# The suite runs under dash (/bin/sh), so that PATH, not busybox's applets, picks tools.
# Whatever happens, it ends with a power-off: a hang is caught by the host's time limit.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
# TCG emulation runs the tests several times slower than the host: the end-to-end tests'
# waits (`wait_for` in tests/src/process.rs) are multiplied by this.
export E2E_TIME_SCALE=4

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
# /tmp stays on the initramfs root (already in memory): a tmpfs over it would hide the
# test executables when the repository itself lives under /tmp.
chmod 1777 /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /run/netns /var /root
ln -s /run /var/run
# Kernel messages stay off the console unless they are errors.
echo 3 >/proc/sys/kernel/printk

MARK=/dev/ttyS1
say() { echo "qemu-matrix: $*"; }

# Modules: the load order was computed on the host from modules.dep (dependencies first).
failed_modules=
while read -r module; do
	[ -n "$module" ] || continue
	insmod "$module" || failed_modules="$failed_modules $module"
done </qm/modules.order
if [ -n "$failed_modules" ]; then
	say "module load failed:$failed_modules"
	printf 'QM|modules|fail|%s\n' "$failed_modules" >>$MARK
else
	printf 'QM|modules|ok|%s\n' "$(wc -l </qm/modules.order)" >>$MARK
fi

ip link set lo up
# Name resolution for "localhost" without a resolver.
printf '127.0.0.1 localhost\n::1 localhost\n' >/etc/hosts

say "kernel $(uname -r), $(nproc) CPUs, running the suite"
QM_ROOT=/qm QM_MARK=$MARK QM_WORK=/tmp/qm-work QM_TEST_TIMEOUT=$(cat /qm/test-timeout) /bin/dash /qm/suite.sh 2>&1
say "suite finished; powering off"
sync
poweroff -f
echo o >/proc/sysrq-trigger
sleep 5
