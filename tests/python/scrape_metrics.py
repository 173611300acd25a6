"""Scrapes a Prometheus endpoint and parses it with prometheus_client's text-format parser
(the Prometheus project's Python client), printing JSON: the metric families and every
sample as [name, labels, value]. A body the parser refuses makes it exit non-zero.

usage: scrape_metrics.py URL
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    families, samples = [], []
    for family in text_string_to_metric_families(text):
        families.append({"name": family.name, "type": family.type})
        samples.extend([s.name, s.labels, s.value] for s in family.samples)
    print(json.dumps({"content_type": content_type, "families": families, "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
