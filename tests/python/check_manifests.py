#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/kubernetes/ (run by tests/run.sh):

1. yamllint, strict, with deploy/kubernetes/.yamllint;
2. kubernetes-validate --strict: every object against the Kubernetes API schemas
   (unknown fields are errors, so a typo cannot be silently ignored by a cluster);
3. one source of truth: the DaemonSet's pod template equals pod.yaml's labels,
   annotations and spec, key for key.

Exits non-zero naming what is wrong.
"""
import subprocess
import sys
from pathlib import Path

import yaml

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"check_manifests: {' '.join(map(str, command))} failed:\n{result.stdout}{result.stderr}")


def template_matches_pod():
    pod = yaml.safe_load((KUBE / "pod.yaml").read_text())
    daemonset = yaml.safe_load((KUBE / "daemonset.yaml").read_text())
    template = daemonset["spec"]["template"]
    expected = {"labels": pod["metadata"]["labels"], "annotations": pod["metadata"].get("annotations")}
    got = {"labels": template["metadata"]["labels"], "annotations": template["metadata"].get("annotations")}
    if got != expected:
        sys.exit(f"check_manifests: daemonset.yaml's template metadata differs from pod.yaml's:\n{got}\n{expected}")
    if template["spec"] != pod["spec"]:
        keys = sorted(k for k in set(pod["spec"]) | set(template["spec"])
                      if pod["spec"].get(k) != template["spec"].get(k))
        sys.exit(f"check_manifests: daemonset.yaml's pod spec differs from pod.yaml's in {keys}: "
                 "copy pod.yaml's spec into the template")
    if daemonset["spec"]["selector"]["matchLabels"].items() - pod["metadata"]["labels"].items():
        sys.exit("check_manifests: the DaemonSet's selector does not match pod.yaml's labels")


def main():
    manifests = sorted(KUBE.glob("*.yaml"))
    run(["yamllint", "--strict", "-c", KUBE / ".yamllint", *manifests])
    run(["kubernetes-validate", "--strict", "--quiet", *manifests])
    template_matches_pod()
    print(f"check_manifests: {len(manifests)} manifests valid; the DaemonSet's template is pod.yaml's")


if __name__ == "__main__":
    main()
