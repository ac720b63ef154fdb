#!/bin/sh
# One-shot model builder: export CHECKPOINT (an OpenAI CLIP checkpoint) into the model repository that
# Triton serves, for Triton's native GPU backend. Without a checkpoint it exports seeded random weights
# (RANDOM_INIT_ARCH, default ViT-B/32) and says so loudly: the features are then meaningless.
#
# Environment: REPOSITORY (default /models), CHECKPOINT (default /checkpoint/model.pt; an empty file or
# /dev/null mounted there means "none"), PRECISION (default: the GPU target's, fp16), VISUAL_BACKEND
# (python, the default, or native: Triton's own pytorch/onnxruntime backend), EXPORT_FORMAT (default: the
# target's, torchscript; onnx needs VISUAL_BACKEND=native), RANDOM_INIT_ARCH, MAX_BATCH_SIZE (default 64),
# CPU_JPEG_DECODE=1 (decode every image with the exact CPU transform instead of nvJPEG), CONFIG_OVERRIDES
# (a folder of <model>.pbtxt whose fields replace the generated ones: apply_overrides.py),
# REQUIRE_CHECKPOINT=1 (a missing checkpoint is an error, not random weights).
set -eu

REPOSITORY="${REPOSITORY:-/models}"
CHECKPOINT="${CHECKPOINT:-/checkpoint/model.pt}"
RANDOM_INIT_ARCH="${RANDOM_INIT_ARCH:-ViT-B/32}"
MAX_BATCH_SIZE="${MAX_BATCH_SIZE:-64}"

set -- export --repository "$REPOSITORY" --target gpu --max-batch-size "$MAX_BATCH_SIZE" \
    --visual-backend "${VISUAL_BACKEND:-python}"
if [ -n "${EXPORT_FORMAT:-}" ]; then set -- "$@" --format "$EXPORT_FORMAT"; fi
if [ -n "${PRECISION:-}" ]; then set -- "$@" --precision "$PRECISION"; fi
if [ "${CPU_JPEG_DECODE:-0}" = 1 ]; then set -- "$@" --cpu-jpeg-decode; fi
if [ -f "$CHECKPOINT" ] && [ -s "$CHECKPOINT" ]; then
    # Re-exporting a large checkpoint takes minutes: skip it when the repository already holds this
    # exact checkpoint exported with these options (the stamp is written only after a full export).
    stamp="$(sha256sum "$CHECKPOINT" | cut -d' ' -f1) $*"
    set -- "$@" --checkpoint "$CHECKPOINT"
elif [ -c "$CHECKPOINT" ] || { [ ! -e "$CHECKPOINT" ] && [ "${REQUIRE_CHECKPOINT:-0}" != 1 ]; }; then
    # /dev/null (compose's default mount) or nothing at all: no weights were given.
    stamp="random-init $RANDOM_INIT_ARCH $*"
    set -- "$@" --random-init "$RANDOM_INIT_ARCH"
    echo "model-builder: no checkpoint given (set CHECKPOINT=/path/to/ViT-B-32.pt):" \
         "exporting RANDOM weights for $RANDOM_INIT_ARCH - features will not be meaningful" >&2
else
    # Docker mounts a host path that does not exist as an empty directory: say so instead of guessing.
    echo "model-builder: $CHECKPOINT is not a non-empty checkpoint file (is the CHECKPOINT path right?)" >&2
    exit 2
fi

if [ -n "${CONFIG_OVERRIDES:-}" ]; then
    stamp="$stamp overrides:$(cat "$CONFIG_OVERRIDES"/*.pbtxt 2>/dev/null | sha256sum | cut -d' ' -f1)"
fi
if [ -f "$REPOSITORY/.clip-triton-build" ] && [ "$(cat "$REPOSITORY/.clip-triton-build")" = "$stamp" ]; then
    echo "model-builder: $REPOSITORY already holds this export; nothing to do"
    exit 0
fi
rm -f "$REPOSITORY/.clip-triton-build"
clip-triton "$@"
if [ -n "${CONFIG_OVERRIDES:-}" ]; then
    python3 "$(dirname "$0")/apply_overrides.py" "$REPOSITORY" "$CONFIG_OVERRIDES"
fi
printf '%s' "$stamp" > "$REPOSITORY/.clip-triton-build"
