"""Apply per-deployment config overrides to a generated model repository.

For each `<model>.pbtxt` in the overrides folder, every top-level field it sets *replaces* that field in
`<repository>/<model>/config.pbtxt` (a whole `instance_group` list, say, with a rate limiter), and the
result is written back in Triton's text format. Both files are parsed as Triton's ModelConfig protobuf,
so a typo fails the build here instead of the model load on a GPU node.

    python -m apply_overrides REPOSITORY OVERRIDES_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb


def apply_override(config: pb.ModelConfig, override: pb.ModelConfig) -> pb.ModelConfig:
    merged = pb.ModelConfig()
    merged.CopyFrom(config)
    for field, _ in override.ListFields():
        merged.ClearField(field.name)
    merged.MergeFrom(override)
    return merged


def apply_overrides(repository: Path, overrides: Path) -> list[str]:
    applied = []
    for path in sorted(overrides.glob("*.pbtxt")):
        target = repository / path.stem / "config.pbtxt"
        if not target.is_file():
            raise SystemExit(f"override {path.name}: no model {path.stem!r} in {repository}")
        config = text_format.Parse(target.read_text(), pb.ModelConfig())
        override = text_format.Parse(path.read_text(), pb.ModelConfig())
        target.write_text(text_format.MessageToString(apply_override(config, override)))
        applied.append(path.stem)
    return applied


if __name__ == "__main__":
    repository, overrides = map(Path, sys.argv[1:3])
    for model in apply_overrides(repository, overrides):
        print(f"model-builder: applied config override for {model}")
