#!/usr/bin/env python3
"""Produce TUF metadata with python-tuf (the reference implementation) for the controller's
interop and rejection tests.

Writes one complete repository layout per case under OUT_DIR, in the layout that
`config-service serve` reads (metadata/<N>.root.json, metadata/targets.json,
targets/<path>), so a test can install a case into a served repository unchanged:

  good/                         roots 1 and 2 (rotation signed by old and new root keys),
                                targets v5 signed by both targets keys (threshold 2)
  bad_signature/                targets v6 whose signatures are corrupted
  below_threshold/              targets v6 signed by one of the two required keys
  expired_targets/              targets v6, correctly signed, expired yesterday
  targets_rollback/             targets v4, correctly signed (older than good's v5)
  wrong_hash/                   targets v6 whose sha256 does not match the served file
  wrong_length/                 targets v6 whose length does not match the served file
  missing_custom_v/             targets v6 whose target has no custom.v
  root_not_signed_by_previous/  good + 3.root.json signed only by its own new key

Every case shares good's roots, so a controller pinned to good/metadata/1.root.json that
accepted good sees only the one defect of the case. OUT_DIR/cases.json lists the cases
with what they change. Usage: make_rejection_sets.py OUT_DIR
"""
import copy
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Signature, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

PATH = "2/CONNTRACK/cfg1/config.json"
GOOD_CONTENT = b'{"sweep_interval_secs": 31}\n'
NEW_CONTENT = b'{"sweep_interval_secs": 32}\n'
ROLLBACK_CONTENT = b'{"sweep_interval_secs": 30}\n'


def expiry(days):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return now + timedelta(days=days)


def target(content, version, custom_v=True):
    tf = TargetFile.from_data(PATH, content, ["sha256", "sha512"])
    if custom_v:
        tf.unrecognized_fields["custom"] = {"v": version}
    return tf


def targets_md(version, tf, signers, days=30):
    md = Metadata(Targets(version=version, expires=expiry(days), targets={PATH: tf}))
    for signer in signers:
        md.sign(signer, append=True)
    return md


def write_case(out, name, roots, targets, files):
    base = os.path.join(out, name)
    os.makedirs(os.path.join(base, "metadata"), exist_ok=True)
    for md in roots:
        md.to_file(os.path.join(base, "metadata", f"{md.signed.version}.root.json"),
                   JSONSerializer(compact=False))
    targets.to_file(os.path.join(base, "metadata", "targets.json"), JSONSerializer(compact=False))
    for path, content in files.items():
        file = os.path.join(base, "targets", path)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with open(file, "wb") as f:
            f.write(content)


def main(out):
    r1, r2, r3 = (CryptoSigner.generate_ed25519() for _ in range(3))
    t1, t2 = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()

    root = Root(version=1, expires=expiry(30), consistent_snapshot=False)
    root.add_key(r1.public_key, "root")
    for role in ("targets", "snapshot", "timestamp"):
        root.add_key(t1.public_key, role)
    root.add_key(t2.public_key, "targets")
    root.roles["targets"].threshold = 2
    root1 = Metadata(root)
    root1.sign(r1)

    # Rotation 1 -> 2: new root key, signed by the old root key and the new one.
    root2 = Metadata(copy.deepcopy(root))
    root2.signed.version = 2
    root2.signed.revoke_key(r1.public_key.keyid, "root")
    root2.signed.add_key(r2.public_key, "root")
    root2.sign(r1, append=True)
    root2.sign(r2, append=True)
    roots = [root1, root2]

    good = targets_md(5, target(GOOD_CONTENT, 3), [t1, t2])
    write_case(out, "good", roots, good, {PATH: GOOD_CONTENT})

    cases = {}

    bad_sig = targets_md(6, target(NEW_CONTENT, 4), [t1, t2])
    for keyid, sig in list(bad_sig.signatures.items()):
        flipped = ("0" if sig.signature[0] != "0" else "1") + sig.signature[1:]
        bad_sig.signatures[keyid] = Signature(keyid, flipped)
    write_case(out, "bad_signature", roots, bad_sig, {PATH: NEW_CONTENT})
    cases["bad_signature"] = "targets v6 with corrupted signatures"

    below = targets_md(6, target(NEW_CONTENT, 4), [t1])
    write_case(out, "below_threshold", roots, below, {PATH: NEW_CONTENT})
    cases["below_threshold"] = "targets v6 with 1 of the 2 required signatures"

    expired = targets_md(6, target(NEW_CONTENT, 4), [t1, t2], days=-1)
    write_case(out, "expired_targets", roots, expired, {PATH: NEW_CONTENT})
    cases["expired_targets"] = "targets v6 that expired a day ago"

    rollback = targets_md(4, target(ROLLBACK_CONTENT, 2), [t1, t2])
    write_case(out, "targets_rollback", roots, rollback, {PATH: ROLLBACK_CONTENT})
    cases["targets_rollback"] = "targets v4 after v5 was accepted"

    wrong_hash = target(NEW_CONTENT, 4)
    wrong_hash.hashes = TargetFile.from_data(PATH, ROLLBACK_CONTENT, ["sha256", "sha512"]).hashes
    write_case(out, "wrong_hash", roots, targets_md(6, wrong_hash, [t1, t2]), {PATH: NEW_CONTENT})
    cases["wrong_hash"] = "targets v6 whose hashes are of other content of the same length"

    wrong_length = target(NEW_CONTENT, 4)
    wrong_length.length += 1
    write_case(out, "wrong_length", roots, targets_md(6, wrong_length, [t1, t2]), {PATH: NEW_CONTENT})
    cases["wrong_length"] = "targets v6 whose length is one byte too long"

    no_v = targets_md(6, target(NEW_CONTENT, 4, custom_v=False), [t1, t2])
    write_case(out, "missing_custom_v", roots, no_v, {PATH: NEW_CONTENT})
    cases["missing_custom_v"] = "targets v6 whose target has no custom.v"

    root3 = Metadata(copy.deepcopy(root2.signed))
    root3.signed.version = 3
    root3.signed.revoke_key(r2.public_key.keyid, "root")
    root3.signed.add_key(r3.public_key, "root")
    root3.sign(r3)  # and not by r2, the key root 2 trusts for root
    write_case(out, "root_not_signed_by_previous", roots + [root3], good, {PATH: GOOD_CONTENT})
    cases["root_not_signed_by_previous"] = "3.root.json signed only by its own new key"

    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"good": {"root_version": 2, "targets_version": 5, "config_version": 3,
                            "path": PATH}, "cases": cases}, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
