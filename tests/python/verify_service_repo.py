#!/usr/bin/env python3
"""Verify a repository written by `config-service` with python-tuf, the TUF reference
implementation: every root N+1 is signed by the threshold of root N and of itself, the
targets are signed by the newest root's targets role, every key id is the spec's key id
of its key, and every served file matches its target's length and hashes and carries an
integer custom.v.

Usage: verify_service_repo.py REPO_DIR [EXPECTED_ROOT_VERSION EXPECTED_TARGETS_VERSION]
Prints one line per check; exits non-zero on the first failure.
"""
import hashlib
import os
import re
import sys
from datetime import datetime, timezone

from securesystemslib.formats import encode_canonical
from tuf.api.metadata import Metadata, Root, Targets


def check_key_ids(root_md):
    for keyid, key in root_md.signed.keys.items():
        spec = {"keytype": key.keytype, "scheme": key.scheme, "keyval": key.keyval}
        computed = hashlib.sha256(encode_canonical(spec).encode()).hexdigest()
        if computed != keyid:
            raise SystemExit(f"key id {keyid} is not the sha256 of its canonical key ({computed})")


def main(repo, expected_root=None, expected_targets=None):
    meta = os.path.join(repo, "metadata")
    versions = sorted(int(m.group(1)) for name in os.listdir(meta)
                      if (m := re.fullmatch(r"(\d+)\.root\.json", name)))
    if not versions or versions[0] != 1 or versions != list(range(1, len(versions) + 1)):
        raise SystemExit(f"root versions must be 1..N without gaps, found {versions}")

    trusted = Metadata[Root].from_file(os.path.join(meta, "1.root.json"))
    trusted.verify_delegate(Root.type, trusted)
    check_key_ids(trusted)
    print("root v1: self-signed, key ids ok")
    for version in versions[1:]:
        new = Metadata[Root].from_file(os.path.join(meta, f"{version}.root.json"))
        if new.signed.version != version:
            raise SystemExit(f"{version}.root.json says version {new.signed.version}")
        trusted.verify_delegate(Root.type, new)
        new.verify_delegate(Root.type, new)
        check_key_ids(new)
        print(f"root v{version}: signed by root v{version - 1} and by itself, key ids ok")
        trusted = new

    targets = Metadata[Targets].from_file(os.path.join(meta, "targets.json"))
    trusted.verify_delegate(Targets.type, targets)
    if targets.signed.is_expired(datetime.now(timezone.utc)):
        raise SystemExit("targets are expired")
    print(f"targets v{targets.signed.version}: signed by root v{trusted.signed.version}'s "
          f"targets role, expires {targets.signed.expires.isoformat()}")

    for path, target in targets.signed.targets.items():
        with open(os.path.join(repo, "targets", path), "rb") as f:
            target.verify_length_and_hashes(f.read())
        v = target.custom.get("v")
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise SystemExit(f"target {path} has no integer custom.v: {target.custom}")
        if "sha256" not in target.hashes:
            raise SystemExit(f"target {path} has no sha256")
        print(f"target {path}: length {target.length}, hashes {sorted(target.hashes)}, v={v}")

    if expected_root is not None and trusted.signed.version != int(expected_root):
        raise SystemExit(f"newest root is v{trusted.signed.version}, expected v{expected_root}")
    if expected_targets is not None and targets.signed.version != int(expected_targets):
        raise SystemExit(f"targets are v{targets.signed.version}, expected v{expected_targets}")
    print("OK")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
