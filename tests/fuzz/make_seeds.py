"""Writes the fuzz targets' seed corpora (corpus/<target>/) from the project's real
fixtures: the ctnetlink captures of the loader's tests, a grpcio client's bytes on a unix
socket, and a repository made by config-service (seeds/: 1.root.json is the fuzzed
controller's pinned root, 2.root.json a rotation, targets.json and cfg1.json a published
config). Protobuf is encoded by hand: the messages are a handful of fields."""
import base64
import json
import lzma
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
from protowire import field, number  # noqa: E402
CTNETLINK = HERE.parent.parent / "privileged-loader/src/conntrack/ctnetlink/fixtures"
CONFIG_PATH = "2/CONNTRACK/cfg1/config.json"


# A minimal BTF blob: the 24-byte header (magic 0xeB9F, version 1, no types or strings).
MINIMAL_BTF = bytes.fromhex("9feb0100") + (24).to_bytes(4, "little") + bytes(16)
BTF_SEEDS = {
    "btf-plain": {"release": "6.18.0", "arch": "x86_64", "data": base64.b64encode(MINIMAL_BTF).decode()},
    "btf-xz": {"release": "6.1.0", "arch": "x86_64", "kernel_version": "#1 SMP", "compression": "xz",
               "data": base64.b64encode(lzma.compress(MINIMAL_BTF, format=lzma.FORMAT_XZ)).decode()},
}


def seed(target: str, name: str, data: bytes) -> None:
    out = HERE / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(data)


def main() -> int:
    s = HERE / "seeds"
    root2, targets, config = (s / "2.root.json").read_bytes(), (s / "targets.json").read_bytes(), (s / "cfg1.json").read_bytes()
    for capture in CTNETLINK.glob("*.bin"):
        seed("ctnetlink_messages", capture.name, capture.read_bytes())
    grpcio = (s / "grpcio-unix-call.bin").read_bytes()
    seed("http2_authority_rewrite", "grpcio-whole", b"\xff" + grpcio)
    seed("http2_authority_rewrite", "grpcio-split", b"\x40" + grpcio)
    tuple_msg = field(1, b"10.0.0.5") + number(2, 40000) + field(3, b"10.96.0.10") + number(4, 80) + number(5, 6)
    seed("loader_requests", "lookup", field(1, tuple_msg) + number(2, 4026531840))
    seed("loader_requests", "lookup-v6", field(1, field(1, b"fd00::5") + number(2, 1) + field(3, b"fd00::a") + number(4, 53) + number(5, 17)))
    seed("loader_requests", "list", number(1, 4026531840))
    files = field(3, field(1, CONFIG_PATH.encode()) + field(2, config))
    seed("tuf_update", "full", field(1, root2) + field(2, targets) + files + field(4, CONFIG_PATH.encode()))
    seed("tuf_update", "targets-only", field(2, targets) + files + field(4, CONFIG_PATH.encode()))
    apply = field(1, root2) + field(2, targets) + field(3, b"CONNTRACK") + field(4, field(1, CONFIG_PATH.encode()) + field(2, config))
    seed("loader_apply_config", "apply", apply)
    seed("loader_apply_config", "apply-no-root", field(2, targets) + field(3, b"CONNTRACK") + field(4, field(1, CONFIG_PATH.encode()) + field(2, config)))
    # config_payloads: the first byte picks the product, in trust::products::ALL's order.
    seed("config_payloads", "conntrack", b"\x00" + config)
    seed("config_payloads", "conntrack-all", b"\x00" + json.dumps({
        "enabled": True, "tcpv6_enabled": False, "udpv6_enabled": True, "max_entries": 65536,
        "strategies": ["core", "netlink"], "destroy_events": True, "sweep_interval_secs": 30}).encode())
    seed("config_payloads", "lock-stats", b"\x01" + b'{"enabled": true, "track_all_maps": false, "max_ranges": 64}')
    seed("config_payloads", "loader-log", b"\x02" + b'{"filter": "info,privileged_loader=debug"}')
    for name, btf in BTF_SEEDS.items():
        seed("config_payloads", name, b"\x03" + json.dumps(btf).encode())
    state = {
        "format": 1,
        "roots": [root2.hex()],
        "targets": targets.hex(),
        "configs": [{"path": CONFIG_PATH, "content": config.hex(), "apply_state": 2, "apply_error": ""}],
        "config_paths": [CONFIG_PATH],
    }
    seed("controller_state_file", "state", json.dumps(state).encode())
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--clean":
        shutil.rmtree(HERE / "corpus", ignore_errors=True)
    sys.exit(main())
