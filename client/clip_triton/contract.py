"""The model contract: names, tensors and limits that clients in any language rely on.

One definition, read by the config generator, the Triton models and the client, so the three can
never disagree about a tensor name or a batch size.
"""
from __future__ import annotations

ENSEMBLE_MODEL = "clip_image_encoder"
PREPROCESS_MODEL = "clip_preprocess"
VISUAL_MODEL = "clip_visual"

IMAGE_INPUT = "IMAGE"  # TYPE_STRING, dims [1]: one encoded image file per batch element
PIXELS_TENSOR = "PIXEL_VALUES"  # TYPE_FP32, dims [3, R, R]: OpenAI's normalized pixels
EMBEDDING_OUTPUT = "EMBEDDING"  # TYPE_FP32, dims [D]: encode_image, not L2-normalized

MAX_BATCH_SIZE = 64
