"""Cross-check with python-tuf, the TUF reference implementation.

usage: python_tuf.py DIR
- verifies DIR/ours.root.json (self-signed) and DIR/ours.targets.json (signed by the
  root's targets role), as written by the Rust side;
- writes DIR/py.root.json, DIR/py.targets.json and DIR/py.config.json, made and signed
  by python-tuf, for the Rust side to verify.
"""
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Targets, TargetFile

PATH = "2/CONNTRACK/py1/config.json"


def verify_ours(d: Path) -> None:
    root = Metadata[Root].from_bytes((d / "ours.root.json").read_bytes())
    root.verify_delegate(Root.type, root)
    targets = Metadata[Targets].from_bytes((d / "ours.targets.json").read_bytes())
    root.verify_delegate(Targets.type, targets)
    for path, target in targets.signed.targets.items():
        data = (d / "ours.file").read_bytes()
        target.verify_length_and_hashes(data)
        assert target.unrecognized_fields["custom"]["v"] >= 1, path


def make_ours(d: Path) -> None:
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    root_signer, targets_signer = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    root = Root(expires=expires)
    root.add_key(root_signer.public_key, Root.type)
    for role in ("targets", "snapshot", "timestamp"):
        root.add_key(targets_signer.public_key, role)
    root_md = Metadata(root)
    root_md.sign(root_signer)
    data = b'{"from": "python-tuf"}'
    target = TargetFile.from_data(PATH, data, ["sha256", "sha512"])
    target.unrecognized_fields["custom"] = {"v": 4}
    targets = Targets(version=2, expires=expires, targets={PATH: target})
    targets_md = Metadata(targets)
    targets_md.sign(targets_signer)
    (d / "py.root.json").write_bytes(root_md.to_bytes())
    (d / "py.targets.json").write_bytes(targets_md.to_bytes())
    (d / "py.config.json").write_bytes(data)


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    verify_ours(directory)
    make_ours(directory)
