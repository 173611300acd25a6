#!/bin/sh
# The kernel-facing test suite of the qemu matrix, for ONE kernel.
#
# Runs inside each guest (started by the initramfs /init, under busybox sh) and, for the
# host row of the matrix, directly on the host (under bash). It only runs things and
# reports; run-matrix.sh judges the results. Everything it reports goes out as marker
# lines on $QM_MARK, one record per line, '|'-separated, so that kernel messages or test
# output can never be mistaken for a result:
#
#   QM|kernel|<uname -r>
#   QM|paging|<4-level|5-level>
#   QM|test|<target>|<pass|fail|missing|timeout>|<seconds>|<args>
#   QM|case|<target>|<test name>|<ok|FAILED|ignored>
#   QM|begin|<label>          followed by a JSON document, then
#   QM|end|<label>            (labels: probe, status, status-prebuilt, status-netlink,
#                             status-broken)
#   QM|done
#
# Layout it expects under $QM_ROOT (made by run-matrix.sh):
#   bin/privileged-loader, bin/loaderctl
#   tests.list       one test target per line: name|executable|working dir|extra args
#                    (executable "-" means the target was not built: reported "missing")
#   tests-e2e.list   (optional, one guest's) end-to-end test targets, the same format
#   bpf-broken/      every embedded object, with conntrack.bpf.o replaced by the
#                    test-only object from tests/qemu/broken/ (the proof the matrix fails)
#
# Environment: QM_ROOT (required), QM_TESTS (test list, default $QM_ROOT/tests.list; the
# host row uses tests-host.list, without the guest-only skips), QM_MARK (marker output, default stdout), QM_WORK
# (scratch dir, default /tmp/qm-work), QM_TEST_TIMEOUT (per test target, seconds).
set -u

: "${QM_ROOT:?QM_ROOT must name the suite directory}"
QM_MARK=${QM_MARK:-/dev/stdout}
QM_WORK=${QM_WORK:-/tmp/qm-work}
QM_TEST_TIMEOUT=${QM_TEST_TIMEOUT:-600}
BIN=$QM_ROOT/bin
mkdir -p "$QM_WORK"

mark() {
	# Markers go to the marker channel and, for the human reading the log, to stdout.
	printf 'QM|%s\n' "$*" >>"$QM_MARK"
	[ "$QM_MARK" = /dev/stdout ] || printf 'QM|%s\n' "$*"
}

# mark_json LABEL FILE: a JSON document between begin/end markers.
mark_json() {
	mark "begin|$1"
	cat "$2" >>"$QM_MARK"
	printf '\n' >>"$QM_MARK"
	mark "end|$1"
}

now() { date +%s; }

# run_target NAME EXE CWD ARGS: one cargo test executable, all its tests, one at a time
# (the lock-contention test needs both CPUs to itself).
run_target() {
	name=$1 exe=$2 cwd=$3 args=$4
	if [ "$exe" = - ] || [ ! -x "$exe" ]; then
		echo "== $name: NOT BUILT (no test target of that name)"
		mark "test|$name|missing|0|$args"
		return
	fi
	echo "== $name $args"
	log=$QM_WORK/$name.log
	start=$(now)
	# shellcheck disable=SC2086 # args is a list of words by design
	(cd "$cwd" && CARGO_MANIFEST_DIR=$cwd RUST_BACKTRACE=1 timeout "$QM_TEST_TIMEOUT" "$exe" --test-threads=1 $args) </dev/null >"$log" 2>&1
	rc=$?
	took=$(($(now) - start))
	cat "$log"
	sed -nE 's/^test (.*) \.\.\. (ok|FAILED|ignored)$/\1|\2/p' "$log" | while IFS= read -r line; do
		mark "case|$name|$line"
	done
	case $rc in
	0) result=pass ;;
	124 | 143) result=timeout ;;
	*) result=fail ;;
	esac
	mark "test|$name|$result|$took|$args"
}

# daemon_status LABEL [loader args...]: starts the loader daemon, waits for its socket,
# records `loaderctl status --json`, stops it. A daemon that never serves is a failed
# test, with its log on the console.
daemon_status() {
	label=$1
	shift
	dir=$QM_WORK/$label
	mkdir -p "$dir"
	sock=$dir/loader.sock
	start=$(now)
	"$BIN/privileged-loader" "$@" run --socket "$sock" </dev/null >"$dir/loader.log" 2>&1 &
	pid=$!
	tries=0
	while [ $tries -lt 120 ]; do
		if "$BIN/loaderctl" --socket "$sock" --json status >"$dir/status.json" 2>"$dir/loaderctl.err"; then
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		tries=$((tries + 1))
		sleep 1
	done
	kill -TERM "$pid" 2>/dev/null
	wait "$pid"
	took=$(($(now) - start))
	echo "== daemon $label: loader log"
	cat "$dir/loader.log"
	if [ -s "$dir/status.json" ]; then
		mark_json "$label" "$dir/status.json"
		mark "test|daemon-$label|pass|$took|$*"
	else
		cat "$dir/loaderctl.err"
		mark "test|daemon-$label|fail|$took|$*"
	fi
}

mark "kernel|$(uname -r)"
# 5-level paging moves the kernel's addresses (offset guessing tells pointers by them).
if grep -qw la57 /proc/cpuinfo; then mark "paging|5-level"; else mark "paging|4-level"; fi
echo "suite: PATH=$PATH; tools: $(for t in ip nft conntrack bpftool tar xz; do command -v $t; done | tr '\n' ' ')"

# 1. The kernel report: which attach kinds work here, and why not.
start=$(now)
if "$BIN/privileged-loader" probe --json >"$QM_WORK/probe.json" 2>"$QM_WORK/probe.err"; then
	cat "$QM_WORK/probe.json"
	mark_json probe "$QM_WORK/probe.json"
	mark "test|probe|pass|$(($(now) - start))|--json"
else
	cat "$QM_WORK/probe.err"
	mark "test|probe|fail|$(($(now) - start))|--json"
fi

# 2. The daemon with the embedded objects: the CO-RE conntracker's chosen strategy.
daemon_status status

# 2b. The same, pinned to each other conntracker: the strategy each one uses here.
daemon_status status-prebuilt --conntrack-strategies prebuilt
daemon_status status-netlink --conntrack-strategies netlink

# 3. The daemon with the deliberately broken conntrack object: the asset outcome.
daemon_status status-broken --bpf-dir "$QM_ROOT/bpf-broken"

# 4. The project's kernel tests (cargo test executables), then this guest's end-to-end
# tests (tests-e2e.list, in its module archive; none on the host row).
for list in "${QM_TESTS:-$QM_ROOT/tests.list}" "$QM_ROOT/tests-e2e.list"; do
	[ -f "$list" ] || continue
	while IFS='|' read -r name exe cwd args; do
		case $name in '' | '#'*) continue ;; esac
		run_target "$name" "$exe" "$cwd" "$args"
	done <"$list"
done

mark done
