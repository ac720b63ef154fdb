"""Pillow's resize and CenterCrop of 8-bit images, bit for bit, as integer matrix products in torch (on the GPU).

Shipped beside the GPU target's clip_preprocess as `clip_pillow_resize.py`; it needs numpy and torch.

What Pillow computes (src/libImaging/Resample.c): a resize is one or two separable passes. For each output
position a pass takes filter weights computed in double precision, normalized to sum 1 and rounded to fixed
point with 22 fractional bits; each output value is the integer sum of input value x weight, plus one half,
shifted right by 22 bits and clipped to 0..255. So a pass is a product of the pixels with an integer matrix,
then that rounding. Here the weights are computed by the same double-precision steps in the same order
(elementwise float64 in torch, on the device the matrix works on: IEEE-rounded alike on a CPU and a GPU), and
the product is computed exactly, so every output value is Pillow's own:
- on CUDA with int8 tensor cores (`torch._int_mm`): a pixel p enters as p - 128 (int8); each weight is split
  into three signed base-256 digits, whose three matrices go side by side in one product with int32
  accumulation (each sum is at most 128 x 128 x taps, far below 2**31); the parts are recombined in int64,
  adding back 128 x the column sums of the weights;
- elsewhere in float64, where every product and sum of these integers is exact (all below 2**53).

Only the outputs that survive the center crop are computed (a pass works on each row or column alone), from
only the inputs they weigh (`input_window`), and a dimension whose size does not change is not resampled
(Pillow skips that pass; torchvision's Resize leaves an image of the right size untouched). Pillow 13 runs
the vertical pass first when the height shrinks by more than twice as many pixels as the width; the installed
Pillow's rule is followed.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import numpy as np
import PIL
import torch

PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2 (two bits of headroom for the filter's negative lobes)
FLOAT64_SLICE_VALUES = 2**22  # input values per float64 product (32 MB as float64)
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
# Pass matrices kept per process, the most recently used first: one per (input size, output size, crop, filter,
# device). One is built where it works (its weights computed on that device: about 100 small kernels and
# one copy of 40 bytes from the host, queued without waiting); a small photo's takes about 0.4 MB of GPU
# memory, a 12 MP photo's 2.7 MB.
_CACHE_BYTES = 256 * 2**20


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic_filter (a = -0.5), the same double operations in the same order."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, 0.0))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return torch.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}  # filter, support


def to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on `device` without waiting: on CUDA through pinned memory, queued on the current
    stream (a pageable copy would wait for everything queued before it)."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def scale_and_support(in_sizes: np.ndarray, out_sizes: np.ndarray, interpolation: str,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's per-resize values on the host, float64: (scale, filter scale, support), as precompute_coeffs
    computes them (the input size through float first: Pillow's box is given in float)."""
    in_sizes, out_sizes = np.asarray(in_sizes, np.int64), np.asarray(out_sizes, np.int64)
    scale = in_sizes.astype(np.float32).astype(np.float64) / out_sizes  # (double)(in1 - in0) / outSize
    filterscale = np.maximum(scale, 1.0)
    return scale, filterscale, FILTERS[interpolation][1] * filterscale


def fixed_weights(in_sizes: np.ndarray, out_sizes: np.ndarray, firsts: np.ndarray, count: int,
                  interpolation: str = "bicubic", device: torch.device = torch.device("cpu"),
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pillow's 8-bit weights (precompute_coeffs, then normalize_coeffs_8bpc) of outputs first .. first + count
    for n resizes at once (one per element of the three arrays), computed on `device`: (start [n, count], the
    first input each output weighs; width [n, count], how many inputs its window holds; fixed [n, count, taps],
    int64, its weights, zero beyond its window). Each is an elementwise float64 operation of Pillow's, in its
    order (IEEE-rounded alike on any device), and each window's sum is taken tap by tap, as Pillow's loop
    does: the weights are Pillow's whatever n and the device. Where a size does not change, they are the
    identity (a weight of exactly 1 at input first + j), what Pillow's skipping that pass gives."""
    kernel, _ = FILTERS[interpolation]
    in_sizes = np.asarray(in_sizes, np.int64)
    scale, filterscale, support = scale_and_support(in_sizes, out_sizes, interpolation)
    ksize = int(np.ceil(support).max()) * 2 + 1 if len(in_sizes) else 1
    # One copy for every per-resize value (the integers are exact in float64), each a column [n, 1].
    table = to_device(np.stack([scale, support, 1.0 / filterscale, np.asarray(firsts, np.float64),
                                in_sizes.astype(np.float64)]), device)[:, :, None]
    scale_, support_, inverse_filterscale, firsts_, in_sizes_ = table
    outputs = firsts_.to(torch.int64) + torch.arange(count, device=device)
    center = 0.0 + (outputs.to(torch.float64) + 0.5) * scale_
    start = torch.trunc(center - support_ + 0.5).to(torch.int64).clamp_(min=0)  # C's (int): toward zero
    stop = torch.minimum(torch.trunc(center + support_ + 0.5).to(torch.int64), in_sizes_.to(torch.int64))
    taps = torch.arange(ksize, device=device)
    inside = taps < (stop - start)[..., None]
    distance = ((taps + start[..., None]).to(torch.float64) - center[..., None]) + 0.5
    weights = torch.where(inside, kernel(distance * inverse_filterscale[..., None]), 0.0)
    total = weights[..., 0].clone()
    for tap in range(1, ksize):  # in order: a parallel sum could round differently
        total += weights[..., tap]
    total = total[..., None]
    weights = torch.where(total != 0.0, weights / total, weights)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = torch.where(inside, torch.trunc(torch.where(weights < 0, -0.5 + scaled, 0.5 + scaled)), 0.0)
    return start, stop - start, fixed.to(torch.int64)


def tap_columns(start: torch.Tensor, taps: int, limit: int) -> torch.Tensor:
    """start [..., count] -> [..., count, taps]: the input column of each tap, or `limit` for a tap at or past
    it. Such a tap weighs zero; its spare column takes every such zero, so that no tap overwrites another."""
    column = start[..., None] + torch.arange(taps, device=start.device)
    return torch.where(column < limit, column, limit)


def combine_digits(parts: torch.Tensor, stride: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """d0 + 256 d1 + 65536 d2 in `dtype` (int64 or float64: exact), from products with the three digit
    matrices side by side, `stride` columns apart, of which the first `count` columns each are used."""
    total = parts[..., 2 * stride:2 * stride + count].to(dtype).mul_(256)
    return total.add_(parts[..., stride:stride + count]).mul_(256).add_(parts[..., :count])


def base_256_digits(weights: torch.Tensor) -> list[torch.Tensor]:
    """Three signed digits d0 + 256 d1 + 65536 d2 of each weight, each in -128..127: exact for |weight| <
    2**23, which holds for every weight Pillow makes (at most 1.125 x 2**22: the bicubic's overshoot)."""
    digits, rest = [], weights
    for _ in range(3):
        digit = (rest + 128) % 256 - 128
        digits.append(digit)
        rest = (rest - digit) // 256
    return digits


class PassMatrix:
    """One pass's weights, ready for exact products on the device they are on (`method`: "int8" or "float64";
    default int8 on CUDA, float64 elsewhere): output i weighs inputs start[i] .. start[i] + taps with
    fixed[i] (int64 [count, taps], zero beyond its window), for inputs of `in_size` values, which are the
    values first_input .. first_input + in_size of what `sums` is given (a center crop needs only those)."""

    def __init__(self, start: torch.Tensor, fixed: torch.Tensor, in_size: int, method: str | None = None,
                 first_input: int = 0):
        self.count, taps = fixed.shape
        self.in_size, self.first_input = in_size, first_input
        device = fixed.device
        self.method = method or exact_method(device)[0]
        column = tap_columns(start, taps, in_size)  # in_size: a spare column, dropped below
        output = torch.arange(self.count, device=device)[:, None].expand_as(column)
        if self.method == "float64":
            matrix = torch.zeros((in_size + 1, self.count), dtype=torch.float64, device=device)
            matrix[column, output] = fixed.to(torch.float64)
            self.matrix = matrix[:in_size]
            return
        # torch._int_mm on CUDA wants more than 16 rows, an inner size of at least 16 in multiples of 8 and an
        # output count in multiples of 8; the inner size (the spare column included) is padded to a multiple of
        # 16 so that every row starts 16-byte aligned. The padding weighs zero.
        self.padded_in, self.padded_count = -(-(in_size + 1) // 16) * 16, -(-self.count // 8) * 8
        stacked = torch.zeros((3, self.padded_count, self.padded_in), dtype=torch.int8, device=device)
        for index, digit in enumerate(base_256_digits(fixed)):  # [outputs, inputs]: column-major B
            stacked[index][output, column] = digit.to(torch.int8)
        self.matrix = stacked.view(3 * self.padded_count, self.padded_in).t()
        self.offset = 128 * fixed.sum(dim=1)  # p = (p - 128) + 128

    @classmethod
    def from_dense(cls, weights: torch.Tensor, method: str | None = None) -> "PassMatrix":
        """Any integer weights [count, in_size] (|weight| < 2**23): to check the products alone."""
        count, in_size = weights.shape
        return cls(torch.zeros(count, dtype=torch.int64, device=weights.device), weights.to(torch.int64), in_size,
                   method)

    @property
    def nbytes(self) -> int:
        return self.matrix.numel() * self.matrix.element_size()

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """uint8 [..., first_input + in_size or more] -> int64 [..., count]: sum of value x weight for each
        output, exactly."""
        values = values[..., self.first_input:self.first_input + self.in_size]
        lead = values.shape[:-1]
        rows = math.prod(lead)
        if self.method == "float64":  # in slices: a float64 copy of a whole batch would be 8x its bytes
            flat, sums = values.reshape(rows, self.in_size), torch.empty((rows, self.count), dtype=torch.int64,
                                                                            device=values.device)
            step = max(1, FLOAT64_SLICE_VALUES // self.in_size)
            for start in range(0, rows, step):
                sums[start:start + step] = torch.matmul(flat[start:start + step].double(), self.matrix)
            return sums.view(*lead, self.count)
        signed = torch.empty((max(rows, 17), self.padded_in), dtype=torch.uint8, device=values.device)
        # p ^ 128 read as int8 is p - 128; the padding columns meet zero weights, whatever they hold
        torch.bitwise_xor(values, 128, out=signed[:rows, :self.in_size].view(*lead, self.in_size))
        parts = torch._int_mm(signed.view(torch.int8), self.matrix)[:rows]
        total = combine_digits(parts, self.padded_count, self.count, torch.int64).add_(self.offset)
        return total.view(*lead, self.count)


def int8_self_check(device: torch.device) -> str | None:
    """Why the int8 products cannot be trusted on `device` (they fail, or differ from the exact sums on random
    weights and pixels), or None when they agree."""
    generator = np.random.default_rng(0)
    weights = generator.integers(-(2 ** 22), 2 ** 22, size=(24, 40))
    pixels = generator.integers(0, 256, size=(3, 7, 40), dtype=np.uint8)
    try:
        sums = PassMatrix.from_dense(torch.from_numpy(weights).to(device), "int8").sums(
            torch.from_numpy(pixels).to(device))
    except Exception as error:  # noqa: BLE001 - whatever the library says is the reason
        return f"torch._int_mm failed: {error!r}"
    if not np.array_equal(sums.cpu().numpy(), pixels.astype(np.int64) @ weights.T):
        return "torch._int_mm gave other sums than the exact ones"
    return None


def checked_once(verdicts: dict[str, str | None], device: torch.device,
                 self_check: Callable[[torch.device], str | None]) -> str | None:
    """`self_check`'s verdict on `device` (why its products cannot be trusted, or None), run once per device
    and kept in `verdicts`."""
    if str(device) not in verdicts:
        verdicts[str(device)] = self_check(device)
    return verdicts[str(device)]


_methods: dict[str, str | None] = {}  # per CUDA device: why not int8, or None


def exact_method(device: torch.device) -> tuple[str, str | None]:
    """(method, why not int8) for `device`: int8 on CUDA where its self-check passes (checked once per device),
    float64 otherwise (exact too, slower on a GPU)."""
    if device.type != "cuda":
        return "float64", None
    reason = checked_once(_methods, device, int8_self_check)
    return ("float64", reason) if reason else ("int8", None)


_matrices: "OrderedDict[tuple, PassMatrix]" = OrderedDict()


def _key(in_size: int, out_size: int, first: int, count: int, interpolation: str, device: torch.device,
         method: str | None) -> tuple:
    return in_size, out_size, first, count, interpolation, str(device), method


def weights_cached(width: int, height: int, size: int, plan: tuple[int, int, int, int], interpolation: str,
                   device: torch.device, method: str | None = None) -> bool:
    """Whether resize_crop has the weights for this image size and plan cached (on `device`)."""
    new_width, new_height, top, left = plan
    keys = [_key(width, new_width, left, size, interpolation, device, method)] if new_width != width else []
    if new_height != height:
        keys.append(_key(height, new_height, top, size, interpolation, device, method))
    return all(key in _matrices for key in keys)


def forget_weights() -> None:
    """Empty the weight cache (as a fresh process has it): for measurements that must not share it."""
    _matrices.clear()


def pass_matrix(in_size: int, out_size: int, first: int, count: int, interpolation: str, device: torch.device,
                method: str | None = None) -> PassMatrix:
    """The weights of outputs first .. first + count of resizing `in_size` to `out_size`, cached."""
    key = _key(in_size, out_size, first, count, interpolation, device, method)
    if key in _matrices:  # the hot path: an image size seen recently
        _matrices.move_to_end(key)
        return _matrices[key]
    start, _, fixed = fixed_weights(np.array([in_size]), np.array([out_size]), np.array([first]), count,
                                    interpolation, device)
    low, high = input_window(in_size, out_size, first, count, interpolation)
    matrix = _matrices[key] = PassMatrix(start[0] - low, fixed[0], high - low, method, first_input=low)
    while sum(held.nbytes for held in _matrices.values()) > _CACHE_BYTES and len(_matrices) > 1:
        _matrices.popitem(last=False)
    return matrix


def input_window(in_size: int, out_size: int, first: int, count: int, interpolation: str) -> tuple[int, int]:
    """(low, high): the inputs that outputs first .. first + count weigh, low included, high not. Where a
    center crop keeps 224 of 298 outputs, that is about three quarters of the inputs, and the products shrink
    alike. Computed on the host by fixed_weights' own float64 steps for the first and last output (windows
    only move forward), then widened by one input each way: a margin that costs nothing, since the inputs
    outside the windows weigh zero."""
    (scale,), _, (support,) = scale_and_support(np.array([in_size]), np.array([out_size]), interpolation)
    first_center = 0.0 + (first + 0.5) * scale
    last_center = 0.0 + (first + count - 1 + 0.5) * scale
    low = max(0, math.trunc(first_center - support + 0.5))
    high = min(math.trunc(last_center + support + 0.5), in_size)
    return max(0, low - 1), min(in_size, high + 1)


def _resample_last_axis(values: torch.Tensor, matrix: PassMatrix) -> torch.Tensor:
    sums = matrix.sums(values)
    return sums.add_(1 << (PRECISION_BITS - 1)).bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def vertical_pass_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Pillow's pass order: horizontal first, except (since Pillow 13) when the height shrinks by more than
    twice as many pixels as the width does (src/libImaging/Resample.c, ImagingResampleInner)."""
    shrink_height, shrink_width = height - new_height, width - new_width
    return _PILLOW_MAJOR >= 13 and shrink_height > 0 and shrink_height > 2 * shrink_width


def resize_crop(batch: torch.Tensor, size: int, plan: tuple[int, int, int, int], interpolation: str = "bicubic",
                method: str | None = None) -> torch.Tensor:
    """uint8 [N, C, H, W] of one size -> uint8 [N, C, size, size]: Pillow's resize to the plan's size (its
    filter), then the plan's crop. `method`: "int8" or "float64" (default: int8 on CUDA, float64 elsewhere)."""
    new_width, new_height, top, left = plan
    height, width = batch.shape[-2:]
    x = batch

    def horizontal(x: torch.Tensor) -> torch.Tensor:
        if new_width == width:
            return x[..., left:left + size]
        return _resample_last_axis(x, pass_matrix(width, new_width, left, size, interpolation, x.device, method))

    def vertical(x: torch.Tensor) -> torch.Tensor:
        if new_height == height:
            return x[..., top:top + size, :]
        matrix = pass_matrix(height, new_height, top, size, interpolation, x.device, method)
        return _resample_last_axis(x.transpose(-1, -2), matrix).transpose(-1, -2)

    passes = (vertical, horizontal) if vertical_pass_first(width, height, new_width, new_height) else (horizontal, vertical)
    for resample in passes:
        x = resample(x)
    return x
