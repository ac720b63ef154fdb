"""`clip-triton`: export a checkpoint, serve it locally, encode images, or run the demo."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clip_triton import ClipError

from . import encode_command, export_command, serve_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clip-triton", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export_command.add_arguments(commands.add_parser(
        "export", help="checkpoint -> Triton model repository (ONNX, TorchScript or OpenVINO IR)"))
    serve_command.add_arguments(commands.add_parser("serve", help="run Triton on a model repository in the foreground"))
    encode_command.add_arguments(commands.add_parser("encode", help="encode image files through the server into a .npz"))
    demo = commands.add_parser("demo", help="export, serve, encode sample images, print a similarity table")
    demo.add_argument("--checkpoint", type=Path, help="a real OpenAI checkpoint (default: random ViT-B/32)")
    demo.add_argument("--arch", default="ViT-B/32", help="architecture for random weights")
    demo.add_argument("--images", type=Path, nargs="+", required=True)
    demo.add_argument("--repository", type=Path, default=Path("demo_repository"))
    demo.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return {"export": export_command.run, "serve": serve_command.run, "encode": encode_command.run,
                "demo": _demo}[args.command](args)
    except (ValueError, RuntimeError, OSError, ClipError) as error:
        print(f"clip-triton {args.command}: {error}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
