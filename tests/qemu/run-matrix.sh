#!/usr/bin/env bash
# The qemu kernel matrix: runs the loader's kernel-facing tests on other kernels.
#
# For every kernel in tests/qemu/kernels.conf it downloads Debian's kernel package through
# apt (newest ABI offered), extracts vmlinuz and the netfilter modules, builds an initramfs
# (busybox-static, the project's test executables and binaries, nft, conntrack, ip,
# bpftool and the shared libraries they need), boots it under qemu (TCG) with a time
# limit, and reads the result markers the guest writes on its second serial port. The
# same suite (tests/qemu/suite.sh) also runs on the host, as the matrix's first row.
#
# Exits non-zero when any test fails, a guest times out or crashes, or an expectation of
# kernels.conf (attach strategy, broken-object outcome) is not met.
#
# Usage: tests/qemu/run-matrix.sh [--only LABEL[,LABEL]] [--no-host] [--report]
#   --report  print the verdict of the last run again (from QEMU_MATRIX_OUT), run nothing
# Environment (defaults in brackets):
#   QEMU_MATRIX_CACHE         downloads and extracted kernels [/var/cache/ebpf-agent-qemu]
#   QEMU_MATRIX_OUT           per-kernel console and marker logs [target/qemu-matrix]
#   QEMU_MATRIX_TIMEOUT       seconds per guest, boot to power-off [1500]
#   QEMU_MATRIX_TEST_TIMEOUT  seconds per test executable inside a guest [600]
#   QEMU_MATRIX_MEMORY        guest memory [2G]
#   QEMU_MATRIX_TARGETS       run only these test targets, comma-separated [all]
#   QEMU_MATRIX_CPU           qemu -cpu model [max,-la57,-hypervisor: see below]
#   QEMU_MATRIX_SMP           guest vCPUs [4: see below]
# Needs root (it installs packages and the host row loads eBPF). See docs/testing.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/tests/qemu
CACHE=${QEMU_MATRIX_CACHE:-/var/cache/ebpf-agent-qemu}
OUT=${QEMU_MATRIX_OUT:-$REPO/target/qemu-matrix}
GUEST_TIMEOUT=${QEMU_MATRIX_TIMEOUT:-1500}
TEST_TIMEOUT=${QEMU_MATRIX_TEST_TIMEOUT:-600}
MEMORY=${QEMU_MATRIX_MEMORY:-2G}
TARGETS=${QEMU_MATRIX_TARGETS:-}
# -la57: 4-level paging, as most fleets (offset guessing walks pointers that 5-level
#   paging places elsewhere).
# -hypervisor: a guest that sees the CPUID hypervisor bit but no paravirt spinlocks (TCG
#   offers none) takes x86's virt_spin_lock() test-and-set path, which never reaches the
#   lock:contention_begin tracepoint: the lock-contention test would see nothing. Without
#   the bit the guest runs native queued spinlocks, as on bare metal.
CPU=${QEMU_MATRIX_CPU:-max,-la57,-hypervisor}
# 4 vCPUs: native queued spinlocks report a waiter only once it queues, i.e. behind a
# holder AND a pending spinner, so the contention test needs 3 CPUs on one lock.
SMP=${QEMU_MATRIX_SMP:-4}
ONLY=
RUN_HOST=1
REPORT_ONLY=0

# The cargo test targets (privileged-loader/tests/<name>.rs) run on every kernel, with
# the libtest arguments they need in the guests (the host row runs them whole):
# - tests that assert this host's own attach kinds (no kprobes, fentry EPERM, tp_btf
#   chosen) are skipped in guests, where the verdict checks the probe report and the
#   chosen strategy against kernels.conf instead;
# - probe_btf_asset's verifier-rejection test runs clang at test time (no compiler in the
#   guests): the broken-object check covers verifier rejections there.
# A target cargo did not build fails the run (a renamed test cannot drop out silently),
# unless its name ends in "?" (targets being renamed across branches: run when present).
TEST_TARGETS=(
  "probe_btf_asset|--skip probe_reports_this_kernel_with_a_reason_for_every_no --skip a_verifier_rejection_is_recorded_with_the_log_tail"
  "conntrack_core|--skip on_this_kernel_tp_btf_is_chosen_and_fentry_and_kprobe_say_why_not"
  "conntrack_netlink|"
  "offsetguess|"
  "conntrack_chain_prebuilt_map?|"
  "conntrack_chain?|"
  "lockstats|"
)
# End-to-end targets of the e2e-tests package (tests/tests/<name>.rs), each run in ONE
# guest (label|target|args: under TCG one takes minutes), narrowed to the tests about a
# kernel unlike the host's (tests/run.sh runs them whole on the host). They start the real
# config-service, controller and loader, found at their host paths in target/debug:
# - the BTF product: the guest's own BTF hidden from the loader (btf.no_sysfs), the
#   conntracker on prebuilt, the guest kernel's minimized BTF published through the
#   service and controller, the conntracker moved onto CO-RE with every translation kept
#   (--nocapture: the log shows the guest's BTF sizes and the publish -> CO-RE time).
GUEST_E2E_TARGETS=(
  "6.1-cloud|loader_remote_config|btf::published_minimized_btf_moves_the_prebuilt_conntracker_onto_core_keeping_every_translation --exact --nocapture"
)
# The binaries those tests start, besides the loader and loaderctl.
E2E_BINS=(config-service controller)
# Modules the tests need, loaded in this order after their dependencies (from
# modules.dep). A module that the kernel has built in is skipped. crc32c_generic first:
# libcrc32c only asks the crypto API for "crc32c" at init (no symbol dependency, so
# modules.dep does not list it), and where it is a module (the RT flavour) nothing else
# would load it: libcrc32c then fails with ENOENT.
MODULES=(crc32c_generic nf_conntrack nf_conntrack_netlink nf_nat nf_tables nft_chain_nat nft_nat nft_ct
  nft_masq nft_redir nf_defrag_ipv4 nf_defrag_ipv6 libcrc32c veth dummy)
# Tools the tests and the suite call, copied with their libraries.
TOOLS=(ip nft conntrack bpftool tar xz)
# Commands this script needs → the Debian package providing each.
declare -A APT_FOR=(
  [qemu-system-x86_64]=qemu-system-x86 [busybox]=busybox-static [cpio]=cpio [jq]=jq
  [clang]=clang [bpftool]=bpftool [nft]=nftables [conntrack]=conntrack [ip]=iproute2
  [strip]=binutils [xz]=xz-utils [tar]=tar [timeout]=coreutils [dash]=dash
)

# Separates the fields of one kernel's expectations (regexes may contain '|').
SEP=$'\x1f'

log() { printf 'qemu-matrix [%ss]: %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 2; }

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --only) ONLY=${2:?--only needs a label}; shift 2 ;;
      --no-host) RUN_HOST=0; shift ;;
      --report) REPORT_ONLY=1; shift ;;
      -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
  done
}

# Installs, through apt, whatever this script needs and the machine lacks.
ensure_tools() {
  local missing=() cmd
  for cmd in "${!APT_FOR[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${APT_FOR[$cmd]}")
  done
  [ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# ---------------------------------------------------------------------------------------
# Kernels: package choice, download and extraction (cached by package version).

# newest_package REGEX → the highest-versioned package name apt offers.
newest_package() {
  local regex=$1 name
  name=$(apt-cache search --names-only "$regex" | awk '{print $1}' | sort -V | tail -n1)
  if [ -z "$name" ]; then
    log "no package matches $regex: refreshing the apt lists"
    apt-get update -qq
    name=$(apt-cache search --names-only "$regex" | awk '{print $1}' | sort -V | tail -n1)
  fi
  [ -n "$name" ] || die "apt offers no package matching $regex"
  echo "$name"
}

# fetch_kernel PACKAGE → prints the extracted tree (cached); downloads only what is new.
fetch_kernel() {
  local pkg=$1 version tree deb
  version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  [ -n "$version" ] && [ "$version" != "(none)" ] || die "apt has no candidate version of $pkg"
  tree=$CACHE/kernels/${pkg}_${version}
  if [ -f "$tree/.complete" ]; then
    log "$pkg $version: cached in $tree"
    echo "$tree"
    return
  fi
  mkdir -p "$CACHE/debs"
  deb=$(ls "$CACHE/debs/${pkg}_${version//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    log "$pkg $version: downloading"
    (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$version" >&2)
    deb=$(ls "$CACHE/debs/${pkg}_${version//:/%3a}_"*.deb | head -n1)
  fi
  log "$pkg $version: extracting $(basename "$deb")"
  rm -rf "$tree"
  mkdir -p "$tree"
  dpkg-deb -x "$deb" "$tree"
  local kver
  kver=$(basename "$(ls -d "$tree"/lib/modules/*/ | head -n1)")
  # Debian generates modules.dep at install time; the package does not ship it.
  busybox depmod -b "$tree" "$kver"
  touch "$tree/.complete"
  echo "$tree"
}

# module_order TREE KVER → the .ko paths (relative to lib/modules/KVER) to insmod, in
# dependency order, for MODULES.
module_order() {
  local tree=$1 kver=$2 dir
  dir=$tree/lib/modules/$kver
  awk -v wanted="${MODULES[*]}" -v builtin_file="$dir/modules.builtin" '
    function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.[a-z]+)?$/, "", p); gsub(/-/, "_", p); return p }
    function visit(p,   n, i, d) {
      if (p in seen) return
      seen[p] = 1
      n = split(deps[p], d, " ")
      for (i = n; i >= 1; i--) visit(d[i])
      print p
    }
    BEGIN { while ((getline line < builtin_file) > 0) builtin[base(line)] = 1 }
    { path = $1; sub(/:$/, "", path); $1 = ""; deps[path] = $0; bypath[base(path)] = path }
    END {
      n = split(wanted, w, " ")
      for (i = 1; i <= n; i++) {
        m = w[i]
        if (m in bypath) visit(bypath[m])
        else if (!(m in builtin)) { print "missing module " m > "/dev/stderr"; exit 1 }
      }
    }' "$dir/modules.dep"
}

# ---------------------------------------------------------------------------------------
# The project: test executables, binaries, objects.

# build_project → fills the associative arrays TEST_EXE (target → executable; the loader's
# and the e2e-tests package's targets) and BIN_EXE (binary → executable) and sets
# LOADER_BIN, LOADERCTL_BIN, OBJECT_DIR. Incremental after the host tests' build.
declare -A TEST_EXE=() BIN_EXE=()
build_project() {
  local json
  json=$(mktemp)
  log "building the test executables and binaries (cargo, incremental)"
  # The same commands as tests/run.sh (whole workspace: same feature unification), so
  # after the host tests nothing is rebuilt.
  (cd "$REPO" && cargo build --workspace --bins --locked --message-format=json) >"$json"
  (cd "$REPO" && cargo test --workspace --no-run --locked --message-format=json) >>"$json"
  local name exe
  while IFS=$'\t' read -r name exe; do
    TEST_EXE[$name]=$exe
  done < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null
                   and .target.kind == ["test"] and (.package_id | test("privileged-loader|e2e-tests")))
                  | [.target.name, .executable] | @tsv' "$json")
  while IFS=$'\t' read -r name exe; do
    BIN_EXE[$name]=$exe
  done < <(jq -r 'select(.reason == "compiler-artifact" and .target.kind == ["bin"] and .profile.test == false)
                  | [.target.name, .executable] | @tsv' "$json")
  LOADER_BIN=${BIN_EXE[privileged-loader]:-}
  LOADERCTL_BIN=${BIN_EXE[loaderctl]:-}
  OBJECT_DIR=$(jq -r 'select(.reason == "build-script-executed"
                       and (.package_id | test("privileged-loader"))) | .out_dir' "$json" | tail -n1)
  rm -f "$json"
  [ -x "$LOADER_BIN" ] && [ -x "$LOADERCTL_BIN" ] || die "cargo did not produce the loader binaries"
  ls "$OBJECT_DIR"/*.bpf.o >/dev/null 2>&1 || die "no eBPF objects in $OBJECT_DIR"
}

# make_suite DIR → the suite layout of tests/qemu/suite.sh, valid on host and in guests
# (guests get every executable at the same absolute path).
make_suite() {
  local dir=$1 entry name args exe
  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/bpf-broken"
  cp "$HERE/suite.sh" "$dir/suite.sh"
  ln -s "$LOADER_BIN" "$dir/bin/privileged-loader"
  ln -s "$LOADERCTL_BIN" "$dir/bin/loaderctl"
  cp "$OBJECT_DIR"/*.bpf.o "$dir/bpf-broken/"
  # The proof the matrix can fail: a conntrack object with a relocation 6.1 cannot meet.
  clang -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror -I "$REPO/bpf/include" \
    -I "/usr/include/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)" \
    -c "$HERE/broken/conntrack.bpf.c" -o "$dir/bpf-broken/conntrack.bpf.o"
  : >"$dir/tests.list"
  : >"$dir/tests-host.list"
  for entry in "${TEST_TARGETS[@]}"; do
    name=${entry%%|*}
    args=${entry#*|}
    local optional=0
    [[ $name == *\? ]] && { optional=1; name=${name%\?}; }
    [ -z "$TARGETS" ] || [[ ,$TARGETS, == *,$name,* ]] || continue
    exe=${TEST_EXE[$name]:--}
    if [ "$exe" = - ] && [ "$optional" = 1 ]; then
      log "optional test target $name is not built here: not run"
      continue
    fi
    echo "$name|$exe|$REPO/privileged-loader|$args" >>"$dir/tests.list"
    echo "$name|$exe|$REPO/privileged-loader|" >>"$dir/tests-host.list"
  done
  # Each guest's own end-to-end list (e2e-LABEL.list), put into its module archive.
  local label
  for entry in "${GUEST_E2E_TARGETS[@]}"; do
    IFS='|' read -r label name args <<<"$entry"
    # A renamed guest must not silently drop its end-to-end tests.
    grep -q "^$label[[:space:]]" "$HERE/kernels.conf" || die "GUEST_E2E_TARGETS names guest $label, which kernels.conf lacks"
    [ -z "$TARGETS" ] || [[ ,$TARGETS, == *,$name,* ]] || continue
    echo "$name|${TEST_EXE[$name]:--}|$REPO/tests|$args" >>"$dir/e2e-$label.list"
  done
  echo "$TEST_TIMEOUT" >"$dir/test-timeout"
}

# ---------------------------------------------------------------------------------------
# The initramfs: one archive shared by every kernel plus one with each kernel's modules
# (the kernel unpacks concatenated newc archives in order).

# copy_elf FILE DEST_ROOT [AS]: the file (stripped of debug info) and every library ldd lists.
copy_elf() {
  local file=$1 root=$2 as=${3:-$1} lib
  mkdir -p "$root$(dirname "$as")"
  if file_is_big "$file"; then
    strip --strip-debug -o "$root$as" "$file"
  else
    cp -L "$file" "$root$as"
  fi
  chmod 0755 "$root$as"
  for lib in $(ldd "$file" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
file_is_big() { [ "$(stat -Lc %s "$1")" -gt 4000000 ]; }

build_common_archive() {
  local root=$1 archive=$2 suite=$3 tool exe name
  rm -rf "$root"
  mkdir -p "$root"/{bin,etc,qm,root,usr/local/bin}
  cp "$(command -v busybox)" "$root/bin/busybox"
  # /bin/sh is dash, not busybox: Debian's busybox sh runs its own applets (ip, tar, xz...)
  # before anything on PATH, and tests and tools (GNU tar runs its compressor through
  # /bin/sh -c) must get the real programs.
  copy_elf "$(command -v dash)" "$root" /bin/dash
  ln -s dash "$root/bin/sh"
  cp "$HERE/init.sh" "$root/init"
  chmod 0755 "$root/init"
  for tool in "${TOOLS[@]}"; do
    copy_elf "$(command -v "$tool")" "$root" "/usr/local/bin/$tool"
  done
  for name in os-release passwd group protocols services; do
    cp -L "/etc/$name" "$root/etc/$name" 2>/dev/null || true
  done
  # The suite layout, with the binaries at their host paths (tests find them there).
  cp -a "$suite/." "$root/qm/"
  rm -f "$root/qm/bin/"*
  copy_elf "$LOADER_BIN" "$root"
  copy_elf "$LOADERCTL_BIN" "$root"
  ln -s "$LOADER_BIN" "$root/qm/bin/privileged-loader"
  ln -s "$LOADERCTL_BIN" "$root/qm/bin/loaderctl"
  for name in "${E2E_BINS[@]}"; do
    [ -x "${BIN_EXE[$name]:-}" ] || die "cargo did not produce $name (the guests' end-to-end tests start it)"
    copy_elf "${BIN_EXE[$name]}" "$root"
  done
  # Only the test executables the guests run (name|executable|dir|args). No guest may have
  # an end-to-end list (QEMU_MATRIX_TARGETS left them out): cat's complaint must not stop
  # the run under pipefail.
  { cat "$suite/tests.list" "$suite"/e2e-*.list 2>/dev/null || true; } | while IFS='|' read -r _ exe _; do
    [ "$exe" = - ] || copy_elf "$exe" "$root"
  done
  mkdir -p "$root$REPO/privileged-loader" "$root$REPO/tests"
  (cd "$root" && find . | cpio -o -H newc --quiet) >"$archive"
}

# build_module_archive TREE KVER ARCHIVE ROOT [E2E_LIST]: the kernel's modules and, when
# given, the guest's end-to-end test list (/qm/tests-e2e.list).
build_module_archive() {
  local tree=$1 kver=$2 archive=$3 root=$4 e2e=${5:-} rel
  rm -rf "$root"
  mkdir -p "$root/qm" "$root/lib/modules/$kver"
  [ -z "$e2e" ] || [ ! -f "$e2e" ] || cp "$e2e" "$root/qm/tests-e2e.list"
  : >"$root/qm/modules.order"
  for rel in $(module_order "$tree" "$kver"); do
    mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
    cp "$tree/lib/modules/$kver/$rel" "$root/lib/modules/$kver/$rel"
    echo "/lib/modules/$kver/$rel" >>"$root/qm/modules.order"
  done
  (cd "$root" && find . | cpio -o -H newc --quiet) >"$archive"
}

# ---------------------------------------------------------------------------------------
# Running: guests under qemu, the host directly.

# boot LABEL VMLINUZ INITRD → console.log and markers.log in $OUT/LABEL; never fails
# itself (the verdict reads the markers; a timeout leaves a "timeout" file).
boot() {
  local label=$1 kernel=$2 initrd=$3 cpu=${4:-$CPU} dir=$OUT/$1 rc=0
  mkdir -p "$dir"
  rm -f "$dir"/{console.log,markers.log,timeout,qemu-exit}
  log "$label: booting $(basename "$kernel") (TCG, -cpu $cpu, limit ${GUEST_TIMEOUT} s)"
  timeout --kill-after=10 "$GUEST_TIMEOUT" qemu-system-x86_64 \
    -nographic -monitor none -no-reboot -m "$MEMORY" -smp "$SMP" -cpu "$cpu" -accel tcg -nic none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" \
    -serial stdio -serial "file:$dir/markers.log" \
    </dev/null >"$dir/console.log" 2>&1 || rc=$?
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && touch "$dir/timeout"
  echo "$rc" >"$dir/qemu-exit"
}

run_host() {
  local suite=$1 dir=$OUT/host
  mkdir -p "$dir"
  rm -f "$dir"/{console.log,markers.log,timeout}
  log "host: running the suite on $(uname -r)"
  local scratch
  scratch=$(mktemp -d)
  QM_ROOT=$suite QM_TESTS=$suite/tests-host.list QM_MARK=$dir/markers.log QM_WORK=$scratch QM_TEST_TIMEOUT=$TEST_TIMEOUT \
    bash "$suite/suite.sh" >"$dir/console.log" 2>&1 || true
  rm -rf "$scratch"
}

# ---------------------------------------------------------------------------------------
# The verdict: per kernel, every test and its result, the attach strategies, and the
# expectations. Prints the table; returns non-zero on any failure.

# json_block MARKERS LABEL → the JSON document between QM|begin|LABEL and QM|end|LABEL.
json_block() {
  awk -v l="$2" '$0 == "QM|end|" l {on = 0} on {print} $0 == "QM|begin|" l {on = 1}' "$1"
}

verdict() {
  local label=$1 want_strategy=$2 want_broken=$3 dir=$OUT/$1 m failures=0
  # A guest's serial port turns every \n into \r\n.
  m=$dir/markers.txt
  tr -d '\r' <"$dir/markers.log" >"$m" 2>/dev/null || : >"$m"
  fail() { printf '    FAIL  %s\n' "$*"; failures=$((failures + 1)); }
  echo
  if [ -f "$dir/timeout" ]; then
    echo "== $label: TIMEOUT after ${GUEST_TIMEOUT} s"
    failures=1
  fi
  if [ ! -s "$m" ]; then
    echo "== $label: no result markers (guest did not boot or crashed)"
    tail -n 40 "$dir/console.log" 2>/dev/null | sed 's/^/    | /'
    return 1
  fi
  echo "== $label: kernel $(sed -n 's/^QM|kernel|//p' "$m" | tail -n1), $(sed -n 's/^QM|paging|//p' "$m" | tail -n1) paging"
  grep -q '^QM|modules|fail' "$m" && fail "modules: $(sed -n 's/^QM|modules|fail|//p' "$m")"

  # Attach kinds from the probe, each "no" with its reason.
  local probe status broken
  probe=$(json_block "$m" probe)
  [ -n "$probe" ] || fail "no probe report"
  if [ -n "$probe" ]; then
    echo "  probe (privileged-loader probe --json):"
    jq -r '.attach_kinds[] | "    \(.name): \(if .available then "yes" else "no  (\(.reason))" end)"' <<<"$probe"
    jq -r '"    btf: \(.btf.source // "none")  conntrack: \(.conntrack.available)  lock tracepoints: \(.lock_contention_tracepoints.available)"' <<<"$probe"
  fi

  # The CO-RE conntracker's choice, and every strategy it tried before.
  status=$(json_block "$m" status)
  local strategy=""
  [ -n "$status" ] || fail "no loader status (daemon with the embedded objects)"
  if [ -n "$status" ]; then
    strategy=$(jq -r '.modules[] | select(.name == "conntrack") | .strategy' <<<"$status")
    echo "  CO-RE conntracker (loaderctl status --json): strategy ${strategy:-none}, state $(jq -r '.modules[] | select(.name == "conntrack") | .state' <<<"$status")"
    jq -r 'def line(name; indent): "\(indent)\(if .ok then "ok  " else "no  " end) \(name)\(if .ok then "" else ": " + (.reason | split("\n") | map(select(length > 0)) | last // "") end)";
      .modules[] | select(.name == "conntrack") | .attempts[] | line(.implementation; "    "), (.hooks[] | line(.hook; "      "))' <<<"$status"
    if [ -n "$want_strategy" ] && ! [[ $strategy =~ $want_strategy ]]; then
      fail "CO-RE conntracker strategy '${strategy}' does not match ${want_strategy}"
    fi
  fi

  # The prebuilt and netlink conntrackers, each pinned: the strategy each used here.
  local pinned kind
  for kind in prebuilt netlink; do
    pinned=$(json_block "$m" "status-$kind")
    if [ -z "$pinned" ]; then
      fail "no loader status with the $kind conntracker pinned"
      continue
    fi
    strategy=$(jq -r '.modules[] | select(.name == "conntrack") | .strategy' <<<"$pinned")
    echo "  $kind conntracker (pinned): strategy ${strategy:-none}, state $(jq -r '.modules[] | select(.name == "conntrack") | .state' <<<"$pinned")"
    [[ $strategy == "$kind"* ]] || fail "$kind conntracker pinned, but the strategy is '${strategy}'"
  done

  # The deliberately broken object: the asset outcome the loader reports.
  broken=$(json_block "$m" status-broken)
  [ -n "$broken" ] || fail "no loader status for the broken object"
  if [ -n "$broken" ]; then
    local outcome detail
    outcome=$(jq -r '.assets[] | select(.asset == "conntrack") | .outcome' <<<"$broken")
    detail=$(jq -r '.assets[] | select(.asset == "conntrack") | .detail' <<<"$broken")
    echo "  broken CO-RE object (tests/qemu/broken, reads net_device.irq_moder): asset conntrack = ${outcome:-none} (expected: ${want_broken:-any})"
    # The verifier's verdict line, else the detail's first line.
    { grep -m1 -E 'invalid func|relocat' <<<"$detail" || head -n1 <<<"$detail"; } | sed 's/^/    | /'
    if [ -n "$want_broken" ] && [ "$outcome" != "$want_broken" ]; then
      fail "broken object outcome '${outcome}', expected ${want_broken}"
    fi
    # 195896080 = 0xbad2310: the call aya (like libbpf) writes over an access it could not
    # relocate. Seeing it proves the rejection came from the missing field, not elsewhere.
    if [ "$want_broken" = verifier-error ] && ! grep -q 'unknown#195896080' <<<"$detail"; then
      fail "the verifier rejected the broken object, but not at the poisoned relocation"
    fi
  fi

  echo "  tests:"
  local name result secs args ok failed
  while IFS='|' read -r _ _ name result secs args; do
    ok=$(grep -c "^QM|case|$name|.*|ok$" "$m" || true)
    failed=$(grep "^QM|case|$name|.*|FAILED$" "$m" | cut -d'|' -f4 | paste -sd, - || true)
    printf '    %-7s %-30s %4ss  %s\n' "$(tr '[:lower:]' '[:upper:]' <<<"$result")" "$name" "$secs" \
      "$([ "$ok" -gt 0 ] || [ -n "$failed" ] && echo "$ok ok${failed:+; failed: $failed}")"
    [ "$result" = pass ] || failures=$((failures + 1))
  done < <(grep '^QM|test|' "$m")
  if ! grep -q '^QM|done' "$m"; then
    fail "the suite did not finish (no QM|done marker)"
  fi
  if [ "$failures" -gt 0 ]; then
    echo "  => $label: $failures failure(s); console log: $dir/console.log"
    return 1
  fi
  echo "  => $label: all passed"
}

report_only() {
  local -a args=() failed=()
  [ "$RUN_HOST" = 1 ] && [ -d "$OUT/host" ] && args+=("host${SEP}^core/${SEP}")
  local label regex want_strategy want_broken entry
  while read -r label regex want_strategy want_broken _cpu; do
    case $label in '' | '#'*) continue ;; esac
    [ -z "$ONLY" ] || [[ ,$ONLY, == *,$label,* ]] || continue
    [ -d "$OUT/$label" ] && args+=("$label${SEP}$want_strategy${SEP}$want_broken")
  done <"$HERE/kernels.conf"
  for entry in "${args[@]}"; do
    IFS=$SEP read -r label want_strategy want_broken <<<"$entry"
    verdict "$label" "$want_strategy" "$want_broken" || failed+=("$label")
  done
  [ ${#failed[@]} -eq 0 ]
}

main() {
  parse_args "$@"
  [ "$REPORT_ONLY" = 1 ] && { report_only; return; }
  [ "$(id -u)" -eq 0 ] || die "run as root: it installs packages and loads eBPF"
  local start
  start=$(date +%s)
  ensure_tools
  mkdir -p "$CACHE" "$OUT"
  build_project

  local work
  work=$OUT/work
  mkdir -p "$work"
  make_suite "$work/suite"

  local -a labels=() verdict_args=()
  if [ "$RUN_HOST" = 1 ] && { [ -z "$ONLY" ] || [[ ,$ONLY, == *,host,* ]]; }; then
    run_host "$work/suite"
    labels+=(host)
    # The host's kernel decides its own strategy (6.18 here: tp_btf); any core/ one is fine.
    verdict_args+=("host${SEP}^core/${SEP}")
  fi

  local common=""
  local label regex want_strategy want_broken pkg tree kver
  while read -r label regex want_strategy want_broken cpu; do
    case $label in '' | '#'*) continue ;; esac
    [ -z "$ONLY" ] || [[ ,$ONLY, == *,$label,* ]] || continue
    if [ -z "$common" ]; then
      common=$work/common.cpio
      log "building the initramfs (project binaries, tools, libraries)"
      build_common_archive "$work/root-common" "$common" "$work/suite"
    fi
    pkg=$(newest_package "$regex")
    tree=$(fetch_kernel "$pkg")
    kver=$(basename "$(ls -d "$tree"/lib/modules/*/ | head -n1)")
    build_module_archive "$tree" "$kver" "$work/modules-$label.cpio" "$work/root-$label" "$work/suite/e2e-$label.list"
    cat "$common" "$work/modules-$label.cpio" >"$work/initrd-$label.cpio"
    local t0=$SECONDS
    boot "$label" "$tree/boot/vmlinuz-$kver" "$work/initrd-$label.cpio" "${cpu:-$CPU}"
    log "$label: guest ran $((SECONDS - t0)) s"
    rm -f "$work/initrd-$label.cpio"
    labels+=("$label")
    verdict_args+=("$label${SEP}$want_strategy${SEP}$want_broken")
  done <"$HERE/kernels.conf"

  echo
  echo "================ qemu kernel matrix ================"
  local failed=0 entry
  local -a failed_labels=()
  for entry in "${verdict_args[@]}"; do
    IFS=$SEP read -r label want_strategy want_broken <<<"$entry"
    verdict "$label" "$want_strategy" "$want_broken" || failed_labels+=("$label")
  done
  failed=${#failed_labels[@]}
  echo
  echo "matrix: ${#labels[@]} kernel(s) (${labels[*]}), $failed failed, $(($(date +%s) - start)) s"
  for label in "${failed_labels[@]}"; do
    echo
    echo "---------------- console of $label ($OUT/$label/console.log) ----------------"
    cat "$OUT/$label/console.log" 2>/dev/null || true
  done
  [ "$failed" -eq 0 ]
}

# On one line, so that editing this file while it runs cannot make bash read on.
main "$@"; exit $?
