"""What the HTTP front costs: the same HTTP requests, alternately through `serve`'s front and straight to
Triton's private HTTP port, on the tiny golden ViT. Prints p50/p90 per case as a Markdown table.

    python -m tools.http_front_cost [--repeats 400]
"""
from __future__ import annotations

import argparse
import io
import time
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

from clip_triton import contract


def round_trips(address: str, blob: bytes | None, repeats: int) -> list[float]:
    """Milliseconds per request, one at a time: readiness (blob None) or a one-image inference."""
    client = httpclient.InferenceServerClient(address)
    times = []
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            if blob is None:
                client.is_server_ready()
            else:
                tensor = httpclient.InferInput(contract.IMAGE_INPUT, [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[blob]], dtype=np.object_), binary_data=True)
                client.infer(contract.ENSEMBLE_MODEL, [tensor])
            times.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return times


def noise_png(side: int) -> bytes:
    """An uncompressed PNG of noise: a large request body."""
    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    from clip_triton_serve import local_server
    from tools.local_server import SHARED_IMAGES, exported_tiny_vit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=400, help="requests per case and path (halved per size step)")
    args = parser.parse_args(argv)
    large = noise_png(1200)
    cases = {"/v2/health/ready": (None, args.repeats * 4),
             "infer chelsea.png (0.24 MB)": ((SHARED_IMAGES / "chelsea.png").read_bytes(), args.repeats),
             f"infer noise PNG ({len(large) / 1e6:.1f} MB)": (large, max(4, args.repeats // 10))}
    print("| request | through the front p50 / p90 ms | straight to Triton p50 / p90 ms |\n|---|---|---|")
    with exported_tiny_vit() as repository, local_server(repository) as server:
        paths = {"front": urlsplit(server.http_url).netloc, "direct": urlsplit(server.triton_http_url).netloc}
        for name, (blob, repeats) in cases.items():
            times: dict[str, list[float]] = {path: [] for path in paths}
            for _ in range(4):  # alternate, so both paths see the same machine
                for path, address in paths.items():
                    times[path] += round_trips(address, blob, max(1, repeats // 4))
            cells = [f"{np.percentile(times[path], 50):.2f} / {np.percentile(times[path], 90):.2f}" for path in paths]
            print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
