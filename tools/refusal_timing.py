"""How long the real server takes to refuse a decompression bomb (60000x60000 PNG) and a tens-of-MB element,
round trip over gRPC on loopback, next to a good image for scale. Figures for the README; the tests prove
the refusals and the memory bound, not the times."""
from __future__ import annotations

import argparse
import statistics
import time

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clip_triton import contract
from tools.crafted_images import decompression_bomb_png, oversized_element


def round_trips(url: str, payload: bytes, repeats: int) -> tuple[list[float], str]:
    client = grpcclient.InferenceServerClient(url)
    tensor = contract.image_input([payload])
    times, outcome = [], "OK"
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                client.infer(contract.ENSEMBLE_MODEL, [tensor])
            except InferenceServerException as error:
                outcome = f"{error.status()}: {error.message()[:120]}"
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return times, outcome


def main(argv: list[str] | None = None) -> int:
    from clip_triton_serve import local_server
    from tools.local_server import SHARED_IMAGES, exported_tiny_vit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    cases = {"good image (chelsea.png)": (SHARED_IMAGES / "chelsea.png").read_bytes(),
             "60000x60000 PNG bomb (0.4 MB file)": decompression_bomb_png(60000),
             "72 MiB element": oversized_element()}
    print("| input | outcome | median ms | max ms |\n|---|---|---|---|")
    with exported_tiny_vit() as repository, local_server(repository) as server:
        for name, payload in cases.items():
            times, outcome = round_trips(server.grpc_url, payload, args.repeats)
            print(f"| {name} | {outcome} | {statistics.median(times) * 1000:.1f} | {max(times) * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
