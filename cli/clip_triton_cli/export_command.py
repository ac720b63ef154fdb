"""`clip-triton export`: the command line of `clip_triton_export.pipeline.export_repository`."""
from __future__ import annotations

import argparse
from pathlib import Path

from clip_triton import contract


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path,
                        help="OpenAI .pt (TorchScript or state dict) or .safetensors; a Hugging Face CLIP folder (or its "
                             "weights file beside config.json); an open_clip state dict with open_clip_config.json "
                             "beside it (or --open-clip-config)")
    source.add_argument("--random-init", metavar="ARCH", help="seeded random weights of an OpenAI architecture")
    parser.add_argument("--open-clip-config", type=Path,
                        help="open_clip model config of --checkpoint (open_clip_config.json or open_clip's "
                             "model_configs/<name>.json): its activation, heads and preprocessing; without one, a "
                             "state dict is read as OpenAI's (QuickGELU, OpenAI's preprocessing)")
    parser.add_argument("--repository", type=Path, required=True, help="model repository directory to write")
    parser.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"),
                        help="the visual model's file (default: onnx for --target cpu, torchscript for gpu)")
    parser.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                        help="cpu: both models on CPU cores (runs anywhere); gpu: JPEG decoding, resizing and the "
                             "visual model on NVIDIA GPUs, fp16 by default")
    parser.add_argument("--visual-backend", choices=("python", "native"), default="python",
                        help="gpu target: python (default) runs the TorchScript model with torch in the Python "
                             "backend, here and in NVIDIA's container alike; native uses Triton's pytorch or "
                             "onnxruntime backend (NVIDIA's container only)")
    parser.add_argument("--cpu-jpeg-decode", dest="gpu_decode", action="store_false",
                        help="gpu target: decode and resize every image with the exact CPU transform (bit-faithful "
                             "to OpenAI's, slower) instead of nvJPEG and the GPU")
    parser.add_argument("--max-batch-size", type=int, default=contract.MAX_BATCH_SIZE)
    parser.add_argument("--fast-jpeg-decode", action="store_true",
                        help="decode big JPEGs at reduced scale (much faster, not bit-exact; cosine >= 0.999)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    parser.add_argument("--configs-only", action="store_true", help="write configs and code, not the model file")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"),
                        help="fp32 (the CPU target's default); fp16 (the GPU target's default): what OpenAI's "
                             "encode_image computes on CUDA; bf16: OpenVINO computes the model in bfloat16 (AMX), "
                             "about 3.5x fp32's speed on CPUs with AMX; int8: OpenVINO int8 (VNNI/AMX) model, about "
                             "3-4x; each within --min-cosine of fp32, checked at export; bf16 and int8 are CPU "
                             "models, served by OpenVINO in either target")
    parser.add_argument("--calibration-images", type=Path,
                        help="folder of typical images: int8 calibrates on them, bf16 and int8 are checked on "
                             "them (default: the package's sample images)")
    parser.add_argument("--min-cosine", "--int8-min-cosine", dest="min_cosine", type=float, default=0.999,
                        help="fp16, bf16 and int8 must keep every calibration image's features within this cosine "
                             "of fp32, or the export falls back to a safer scheme (int8 ViT) or refuses")


def run(args: argparse.Namespace) -> int:
    from clip_triton_export.pipeline import export_repository
    from clip_triton_export.repository import RepositoryOptions

    options = RepositoryOptions(fmt=args.fmt, target=args.target, precision=args.precision,
                                visual_backend=args.visual_backend, gpu_decode=args.gpu_decode,
                                max_batch_size=args.max_batch_size, fast_jpeg_decode=args.fast_jpeg_decode)
    print(export_repository(args.repository, options, checkpoint=args.checkpoint, random_init=args.random_init,
                            seed=args.seed, configs_only=args.configs_only,
                            calibration_images=args.calibration_images, min_cosine=args.min_cosine,
                            open_clip_config=args.open_clip_config))
    return 0
