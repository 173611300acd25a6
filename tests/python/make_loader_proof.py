#!/usr/bin/env python3
"""A remote-config proof made and signed by python-tuf (the TUF reference implementation),
for the loader to re-verify: a self-signed root v1 and targets v3 listing one LOADER_LOG
config (custom.v = 1, sha256 and sha512).

usage: make_loader_proof.py OUT_DIR  ->  OUT_DIR/root.json, targets.json, config.json, path
"""
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

PATH = "2/LOADER_LOG/py/config.json"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
    root_signer, targets_signer = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()
    root = Root(expires=expires)
    root.add_key(root_signer.public_key, Root.type)
    for role in ("targets", "snapshot", "timestamp"):
        root.add_key(targets_signer.public_key, role)
    root_md = Metadata(root)
    root_md.sign(root_signer)
    data = b'{"filter": "info,h2=debug"}'
    target = TargetFile.from_data(PATH, data, ["sha256", "sha512"])
    target.unrecognized_fields["custom"] = {"v": 1}
    targets_md = Metadata(Targets(version=3, expires=expires, targets={PATH: target}))
    targets_md.sign(targets_signer)
    (out / "root.json").write_bytes(root_md.to_bytes())
    (out / "targets.json").write_bytes(targets_md.to_bytes())
    (out / "config.json").write_bytes(data)
    (out / "path").write_text(PATH)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
