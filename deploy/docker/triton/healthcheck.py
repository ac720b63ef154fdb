"""Container healthcheck: exit 0 only when Triton answers 200 on /v2/health/ready.

Python, not curl, because the Triton image always has python3 (the Python backend needs it); the probe
is the one `clip-triton serve` uses (clip_triton_serve.probes). Strict readiness is on, so "ready" means
every model, the ensemble included, is loaded.
"""
from __future__ import annotations

import os
import sys

from clip_triton_serve.probes import is_ready

if __name__ == "__main__":
    sys.exit(0 if is_ready(f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '8000')}", timeout_s=3.0) else 1)
