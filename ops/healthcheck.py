"""Container health probe for the churn worker: exit 0 only if ``/health`` answers 2xx.

The slim Python image has no curl or wget, and installing one just for a probe would grow the
image and its attack surface; the interpreter is already there. The port follows
``CHURN_WEB_PORT`` so a worker moved to another port keeps a truthful health status.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(url: str, timeout: float = 3.0) -> bool:
    """Return True if ``url`` answers with a 2xx status within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    """Probe the local worker's ``/health`` and turn the answer into an exit code."""
    port = os.environ.get("CHURN_WEB_PORT", "6066")
    return 0 if probe(f"http://127.0.0.1:{port}/health") else 1


if __name__ == "__main__":
    sys.exit(main())
