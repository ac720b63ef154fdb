"""`make demo`: export, start a real server on loopback, encode sample images, print what came back."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from clip_triton import ClipClient
from clip_triton.image_files import find_images
from clip_triton_serve import local_server


def run_demo(args: argparse.Namespace) -> int:
    from clip_triton_export.pipeline import export_repository

    print(export_repository(args.repository, checkpoint=args.checkpoint,
                            random_init=None if args.checkpoint else args.arch, fmt=args.fmt, target="cpu"))
    paths = find_images(args.images)
    if not paths:
        print(f"no images found under {', '.join(map(str, args.images))}", file=sys.stderr)
        return 1
    with local_server(args.repository.resolve()) as server:
        print(f"\ntritonserver ready (pid {server.pid}) on gRPC {server.grpc_url}")
        with ClipClient(server.grpc_url) as client:
            weights = client.model_parameters().get("weights", "?")
            features = client.encode(paths)
    print(f"weights: {weights}")
    if weights.startswith("random-init"):
        print("NOTE: these weights are seeded random numbers, not a trained CLIP: the numbers below show the\n"
              "pipeline works end to end, not what the images mean. Use `make demo CHECKPOINT=ViT-B-32.pt`.")
    names = [p.name for p in paths]
    width = max(len(n) for n in names)
    print(f"\n{'image':<{width}}  shape   L2 norm")
    for name, row in zip(names, features):
        print(f"{name:<{width}}  {str(row.shape):<7} {np.linalg.norm(row):8.4f}")
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    short = [n.rsplit(".", 1)[0][:8] for n in names]
    print(f"\ncosine similarity\n{'':<{width}}  " + " ".join(f"{s:>8}" for s in short))
    for name, row in zip(names, similarity):
        print(f"{name:<{width}}  " + " ".join(f"{v:8.3f}" for v in row))
    print("\nserver stopped")
    return 0
