"""Pillow's resize and center crop for a batch of images of many sizes at once, bit for bit, in a number of
tensor operations that grows with the batch's groups, not with its sizes.

Shipped beside the GPU target's clip_preprocess as `clip_mixed_resize.py`; it needs numpy and torch, and
clip_pillow_resize for Pillow's weights.

Why: the per-size resize (clip_pillow_resize.resize_crop) launches about 17 kernels for a size whose weights
it has cached, and about 180 for a new one (counted on the CPU), for every distinct image size in a batch.
Photos from the web come in nearly as many sizes as there are photos, so a batch of 64 new sizes paid that
64 times. Here a batch of small images takes about 120 kernels for all its weights, then two batched matrix
products and some 60 kernels per group (about 4 kernels per image for 256 sizes):
- each image is resized along one axis, then along the other, in Pillow's order (an image whose vertical pass
  comes first is transposed before, so its first pass is along its last axis too, and the results line up);
  a dimension whose size does not change gets Pillow's weights for that, the identity (Pillow skips it: the
  same values);
- the images are zero-padded to the largest sizes of their group; Pillow's weights for the whole batch are
  computed where the images are (fixed_weights: Pillow's float64 steps, elementwise, so the same on any
  device) and assembled there into each group's zero-padded matrices, so the host does no per-image work but
  a copy;
- the products are float32 of pixels (0..255) with the three signed base-256 digits of Pillow's fixed-point
  weights (-128..127): every product and every partial sum is an integer below 2**24, so float32 adds them
  exactly in any order; so does TF32 on CUDA (its 11 significant bits hold every such factor), trusted only
  after a self-check at start; the digits are recombined in float64 (exact below 2**53), then rounded and
  clipped as Pillow does.
The padding costs arithmetic (zeros times zeros), never exactness. Images are grouped by size, largest first,
so that one group's padding stays small; big images (12 MP photos: few sizes, much arithmetic) keep the
per-size path, whose int8 products waste none.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from clip_pillow_resize import (PRECISION_BITS, base_256_digits, checked_once, combine_digits, fixed_weights,
                                tap_columns, to_device, vertical_pass_first)

# Values per channel of one group's first product, its input, output and weights alike (bounds GPU memory:
# 16 M of 3 channels are 192 MB of float32 each, plus a float64 copy of a third of the output: about 0.7 GB at
# most).
GROUP_BUDGET_PIXELS = 16 * 2**20
# The largest window these products take: 255 x 128 x taps must stay below 2**24 for float32 to be exact.
# Shrinking an axis k times takes windows of 4k + 3 inputs (bicubic), so at most 100x here leaves room.
MAX_TAPS = 2**24 // (255 * 128)
MAX_DOWNSCALE = 100
# Images up to this many pixels may take this resize on the GPU by default (a Full HD frame may; gpu_transform
# says which do); bigger ones, few sizes and much arithmetic each (12 MP photos), take the per-size int8 one.
DEFAULT_MAX_PIXELS = 2**21
_DIGITS = 3


class _Pass:
    """One pass for a whole batch, on `device`: along lengths[i] inputs to `size` outputs (the crop's) for
    image i. Its weights are computed once for every image; its matrices are assembled group by group."""

    def __init__(self, lengths: np.ndarray, new_lengths: np.ndarray, offsets: np.ndarray, size: int,
                 interpolation: str, device: torch.device):
        # A length that does not change gets the identity (fixed_weights says why): Pillow skips that pass.
        self.start, _, fixed = fixed_weights(lengths, new_lengths, offsets, size, interpolation, device)
        if fixed.shape[-1] > MAX_TAPS:
            raise ValueError(f"a window of {fixed.shape[-1]} inputs is too wide for exact float32 products")
        self.digits = torch.stack(base_256_digits(fixed), dim=-1).to(torch.float32)  # [images, size, taps, 3]
        self.lengths, self.size = lengths, size

    def matrices(self, members: np.ndarray, chosen: torch.Tensor) -> torch.Tensor:
        """float32 [n, padded inputs, 3 x size] for the images `members` (`chosen`: the same indices on the
        device): each image's weights as three digit matrices side by side, zero-padded to the longest."""
        padded_in = int(self.lengths[members].max())
        start, digits = self.start[chosen], self.digits[chosen]
        n, size, taps, _ = digits.shape
        device = digits.device
        # Where each tap's digit goes: image, input column (padded_in: a spare row, dropped below), digit, output.
        column = tap_columns(start, taps, padded_in)
        cell = ((torch.arange(n, device=device)[:, None, None] * (padded_in + 1) + column) * (_DIGITS * size)
                + torch.arange(size, device=device)[None, :, None])[..., None] \
            + torch.arange(_DIGITS, device=device) * size
        matrix = torch.zeros(n * (padded_in + 1) * _DIGITS * size, dtype=torch.float32, device=device)
        matrix[cell.view(-1)] = digits.reshape(-1)
        return matrix.view(n, padded_in + 1, _DIGITS * size)[:, :padded_in]


def _products(values: torch.Tensor, weights: torch.Tensor, tf32: bool) -> torch.Tensor:
    """torch.bmm with TF32 tensor cores on or off for this product alone (the process's setting is restored).
    The legacy flag: setting it keeps torch's newer fp32_precision in step, where setting that one alone would
    make a later read of the legacy flag raise (torch >= 2.9 refuses a mix of the two)."""
    if values.device.type != "cuda":
        return torch.bmm(values, weights)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return torch.bmm(values, weights)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def exact_sums(values: torch.Tensor, weights: torch.Tensor, size: int, tf32: bool | None = None) -> torch.Tensor:
    """float32 [n, rows, inputs] (0..255) x digits [n, inputs, 3 size] -> float64 [n, rows, size]: the
    integer sums of value x weight, exactly (`tf32`: the device's verdict unless given)."""
    parts = _products(values, weights, use_tf32(values.device)[0] if tf32 is None else tf32)
    return combine_digits(parts, size, size, torch.float64)


def _apply(values: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """Pillow's rounding of the exact sums: (sum + half) >> 22, clipped to 0..255; float32 [n, rows, size]."""
    sums = exact_sums(values, weights, size)
    return sums.add_(1 << (PRECISION_BITS - 1)).div_(1 << PRECISION_BITS).floor_().clamp_(0, 255).float()


def extreme_products(taps: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels [1, 5, taps], digits [1, taps, 3 size] and their exact sums [1, 5, size]: random values of the
    largest magnitudes, and in row 0 the largest sums there are (column 0: 255 x -128 at every tap but one
    255 x -127, an odd total; column 1: 255 x 127 at every tap)."""
    generator = np.random.default_rng(0)
    digits = generator.choice(np.array([-128, 127, -1, 0, 1]), size=(1, taps, _DIGITS * size))
    pixels = generator.choice(np.array([0, 1, 254, 255]), size=(1, 5, taps))
    pixels[0, 0] = 255
    digits[0, :, 0], digits[0, :, 1] = -128, 127
    digits[0, 0, 0] = -127
    expected = sum(256**k * (pixels @ digits[..., k * size:(k + 1) * size]) for k in range(_DIGITS))
    return pixels, digits, expected


def tf32_self_check(device: torch.device) -> str | None:
    """Why TF32 products cannot be trusted on `device` (they fail, or differ from the exact sums at the widest
    window with the largest digits and pixels), or None when they agree."""
    size = 8
    pixels, digits, expected = extreme_products(MAX_TAPS, size)
    try:
        sums = exact_sums(torch.from_numpy(pixels).float().to(device), torch.from_numpy(digits).float().to(device),
                          size, tf32=True)
    except Exception as error:  # noqa: BLE001 - whatever the library says is the reason
        return f"TF32 products failed: {error!r}"
    if not np.array_equal(sums.cpu().numpy(), expected.astype(np.float64)):
        return "TF32 products gave other sums than the exact ones"
    return None


_tf32: dict[str, str | None] = {}  # per CUDA device: why not TF32, or None


def use_tf32(device: torch.device) -> tuple[bool, str | None]:
    """(whether these products use TF32 tensor cores on `device`, why not): on CUDA where the self-check passes
    (checked once per device); plain float32 otherwise (exact too, slower)."""
    if device.type != "cuda":
        return False, None
    reason = checked_once(_tf32, device, tf32_self_check)
    return reason is None, reason


def _resize_group(images: Sequence[torch.Tensor], members: np.ndarray, vertical_first: np.ndarray,
                  first: _Pass, second: _Pass) -> torch.Tensor:
    """uint8 [n, C, size, size] for images[members]: both passes, each one batched product."""
    device = images[members[0]].device
    channels, size = images[members[0]].shape[0], first.size
    n, turned = len(members), vertical_first[members]
    chosen = to_device(members, device)
    first_matrices, second_matrices = first.matrices(members, chosen), second.matrices(members, chosen)
    values = torch.zeros((n, channels, second_matrices.shape[1], first_matrices.shape[1]), dtype=torch.float32,
                         device=device)
    for index, member in enumerate(members):
        image = images[member].transpose(-1, -2) if turned[index] else images[member]
        values[index, :, :image.shape[-2], :image.shape[-1]].copy_(image)
    once = _apply(values.view(n, -1, values.shape[-1]), first_matrices, size)  # [n, C x second, size]
    across = once.view(n, channels, values.shape[-2], size).transpose(-1, -2).reshape(n, -1, values.shape[-2])
    twice = _apply(across, second_matrices, size).view(n, channels, size, size)
    # An image resized width first now lies transposed ([C, width, height]); a vertical-first one is upright.
    upright = to_device(turned, device).view(n, 1, 1, 1)
    return torch.where(upright, twice, twice.transpose(-1, -2)).to(torch.uint8)


def groups(lengths: Sequence[tuple[int, int]], size: int, budget: int | None = None) -> list[list[int]]:
    """Indices grouped, largest images first, so that each group's first product stays within `budget` values
    per channel (GROUP_BUDGET_PIXELS by default) for its input (members x longest second pass x longest first
    pass), its output (the first pass's 3 x `size` digit columns in its place) and its weights (members x
    longest first pass x `size`, for each of 3 digits); an image over it forms a group alone."""
    budget = GROUP_BUDGET_PIXELS if budget is None else budget
    order = sorted(range(len(lengths)), key=lambda i: lengths[i][0] * lengths[i][1], reverse=True)
    grouped: list[list[int]] = []
    longest = (0, 0)
    for index in order:
        first, second = lengths[index]
        grown = (max(longest[0], first), max(longest[1], second))
        largest = max(grown[0] * grown[1], _DIGITS * size * grown[1], grown[0] * size)
        if grouped and (len(grouped[-1]) + 1) * largest <= budget:
            grouped[-1].append(index)
            longest = grown
        else:
            grouped.append([index])
            longest = (first, second)
    return grouped


def takes(width: int, height: int, plan: tuple[int, int, int, int], max_pixels: int) -> bool:
    """Whether an image of this size goes through this resize: at most `max_pixels`, shrunk at most
    MAX_DOWNSCALE times along either axis (so that its windows stay exact in float32)."""
    new_width, new_height = plan[:2]
    return width * height <= max_pixels and width <= MAX_DOWNSCALE * new_width and \
        height <= MAX_DOWNSCALE * new_height


def resize_crop_mixed(images: Sequence[torch.Tensor], plans: Sequence[tuple[int, int, int, int]], size: int,
                      interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 [C, H, W] images of any sizes, each with its resize plan (new width, new height, top, left) ->
    uint8 [N, C, size, size] in input order: Pillow's resize (its filter), then the plan's crop."""
    if not images:
        raise ValueError("no images to resize")
    device = images[0].device
    heights = np.array([image.shape[-2] for image in images])
    widths = np.array([image.shape[-1] for image in images])
    new_widths, new_heights, tops, lefts = (np.array(column) for column in zip(*plans))
    vertical_first = np.array([vertical_pass_first(*sizes) for sizes in zip(widths, heights, new_widths, new_heights)],
                              dtype=bool)
    # The first pass runs along the last axis: the width, or the height of an image transposed beforehand.
    first_lengths, second_lengths = np.where(vertical_first, heights, widths), np.where(vertical_first, widths, heights)
    first = _Pass(first_lengths, np.where(vertical_first, new_heights, new_widths), np.where(vertical_first, tops, lefts),
                  size, interpolation, device)
    second = _Pass(second_lengths, np.where(vertical_first, new_widths, new_heights),
                   np.where(vertical_first, lefts, tops), size, interpolation, device)
    results: dict[int, torch.Tensor] = {}
    for group in groups(list(zip(first_lengths.tolist(), second_lengths.tolist())), size):
        members = np.array(group)
        results.update(zip(group, _resize_group(images, members, vertical_first, first, second)))
    return torch.stack([results[i] for i in range(len(images))])
