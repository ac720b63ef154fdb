"""Container healthcheck: exit 0 only when Triton answers 200 on /v2/health/ready.

Python, not curl, because the Triton image always has python3 (the Python backend needs it).
Strict readiness is on, so "ready" means every model, the ensemble included, is loaded.
"""
from __future__ import annotations

import os
import sys
import urllib.request


def ready(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    port = os.environ.get("HTTP_PORT", "8000")
    sys.exit(0 if ready(f"http://127.0.0.1:{port}/v2/health/ready") else 1)
