#!/usr/bin/env python3
"""leadstream-healthcheck URL: exit 0 when URL answers 200 within 3 s, else 1.

The image has no curl; Docker and Kubernetes exec probes run this instead
(the collector's and the leads API's /health, the worker's /metrics on 9102)."""

import sys
import urllib.request


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: leadstream-healthcheck URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=3) as response:
            return 0 if response.status == 200 else 1
    except Exception as exc:  # any failure is "unhealthy"
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
