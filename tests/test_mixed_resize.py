"""The GPU target's resize for a batch of many image sizes at once (clip_mixed_resize), run on the CPU: Pillow's
pixels bit for bit whatever the sizes, exact products at the widest window it takes, grouping within its
budget, and the routing between it and the per-size resize. Torch runs these very operations on CUDA on a GPU
host (`make test-gpu` checks them there, TF32 included)."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clip_triton import transform
from conftest import image_bytes
from gpu_support import MIXED_SIZES as SIZES
from gpu_support import jpeg


@pytest.fixture(scope="module")
def mixed(gpu_transform):
    """clip_mixed_resize as shipped beside clip_gpu_transform (loaded with it)."""
    return sys.modules["clip_mixed_resize"]


def photos(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    astronaut = Image.open(io.BytesIO(image_bytes("astronaut.png"))).convert("RGB")
    return [astronaut.resize(size, Image.BICUBIC) for size in sizes]


def as_tensor(photo: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_batch_of_many_sizes_gets_pillows_pixels_bit_for_bit(mixed, monkeypatch, interpolation: str) -> None:
    settings = transform.Preprocessing(interpolation=interpolation)
    batch = photos(SIZES)
    plans = [transform.resize_plan(*photo.size, 224, preprocessing=settings) for photo in batch]
    expected = [transform.resize_and_crop(photo, 224, preprocessing=settings) for photo in batch]
    monkeypatch.setattr(mixed, "GROUP_BUDGET_PIXELS", 4 * 2**20)  # several groups, the order restored after
    grouped, real_groups = [], mixed.groups
    monkeypatch.setattr(mixed, "groups", lambda *args: grouped.append(real_groups(*args)) or grouped[-1])
    resized = mixed.resize_crop_mixed([as_tensor(photo) for photo in batch], plans, 224, interpolation)
    assert len(grouped[0]) > 2
    assert resized.dtype == torch.uint8 and resized.shape == (len(batch), 3, 224, 224)
    for size, actual, wanted in zip(SIZES, resized, expected):
        assert np.array_equal(actual.permute(1, 2, 0).numpy(), wanted), size


def test_checkpoint_sizes_and_crop_offsets_are_followed(mixed) -> None:
    """Hugging Face-style settings: resize the shorter side to 256, crop 224 with floor offsets."""
    half = (0.5, 0.5, 0.5)
    settings = transform.Preprocessing(half, half, "bicubic", 256, "floor", "before_resize")
    batch = photos(SIZES[:6])
    plans = [transform.resize_plan(*photo.size, 224, preprocessing=settings) for photo in batch]
    resized = mixed.resize_crop_mixed([as_tensor(photo) for photo in batch], plans, 224)
    for photo, actual in zip(batch, resized):
        expected = transform.resize_and_crop(photo, 224, preprocessing=settings)
        assert np.array_equal(actual.permute(1, 2, 0).numpy(), expected), photo.size


def test_many_weights_at_once_are_each_resizes_own(gpu_transform) -> None:
    """fixed_weights for many resizes in one call (windows padded to the widest) gives each resize the weights
    it gets alone, and laid out as the per-size resize's matrix (tested against Pillow) each output weighs
    its window's inputs with them, and nothing else."""
    resize = sys.modules["clip_pillow_resize"]
    keys = [(451, 224, 0), (4000, 298, 37), (17, 224, 0), (640, 640, 5), (300, 260, 18)]
    in_sizes, out_sizes, firsts = (np.array(column) for column in zip(*keys))
    for interpolation in ("bicubic", "bilinear"):
        start, width, fixed = resize.fixed_weights(in_sizes, out_sizes, firsts, 224, interpolation)
        for index, (in_size, out_size, first) in enumerate(keys):
            alone_start, alone_width, alone_fixed = (values[0] for values in resize.fixed_weights(
                np.array([in_size]), np.array([out_size]), np.array([first]), 224, interpolation))
            taps = alone_fixed.shape[-1]
            assert torch.equal(fixed[index, :, :taps], alone_fixed) and not fixed[index, :, taps:].any()
            assert torch.equal(start[index], alone_start) and torch.equal(width[index], alone_width)
            dense = resize.PassMatrix(alone_start, alone_fixed, in_size, "float64").matrix.t().to(torch.int64)
            for output in range(224):
                begin, inside = int(alone_start[output]), int(alone_width[output])
                assert torch.equal(dense[output, begin:begin + inside], alone_fixed[output, :inside])
                assert dense[output].abs().sum() == dense[output, begin:begin + inside].abs().sum()


def test_a_size_that_does_not_change_gets_the_identity(gpu_transform) -> None:
    """Pillow skips the pass of a size that does not change; its own weights for that are exactly the
    identity, which the mixed resize uses instead (one code path for every image)."""
    resize = sys.modules["clip_pillow_resize"]
    for interpolation in ("bicubic", "bilinear"):
        for first in (0, 5):
            lengths = np.arange(first + 224, 3000, 7)
            start, _, fixed = resize.fixed_weights(lengths, lengths, np.full(len(lengths), first), 224, interpolation)
            columns = start[..., None] + torch.arange(fixed.shape[-1])
            assert ((fixed != 0).sum(-1) == 1).all() and (fixed.sum(-1) == 1 << resize.PRECISION_BITS).all()
            assert torch.equal(columns[fixed != 0].view(len(lengths), 224),
                               (first + torch.arange(224)).expand(len(lengths), 224))


def test_pillows_weights_fit_in_three_base_256_digits(gpu_transform) -> None:
    """The mixed resize splits weights into three signed base-256 digits without checking each (a check would
    wait for the GPU): every weight Pillow makes lies within +-2**23, for any size to any size it resizes."""
    resize = sys.modules["clip_pillow_resize"]
    in_sizes = np.repeat(np.arange(1, 2001), 3)
    out_sizes = np.tile(np.array([37, 224, 3000]), 2000)  # down up to 54x, up to 3000x
    largest = {}
    for interpolation in ("bicubic", "bilinear"):
        for first in (0, 36):  # the first and the last of 37 outputs, and others: windows cut by either edge
            _, _, fixed = resize.fixed_weights(in_sizes, out_sizes, np.full(len(in_sizes), first), 1, interpolation)
            largest[interpolation, first] = int(fixed.abs().max())
    assert max(largest.values()) < 2**23 and largest["bicubic", 0] > 2**22, largest  # the bicubic's overshoot


def test_the_products_are_exact_at_the_widest_window(mixed) -> None:
    """The largest digits and pixels over MAX_TAPS inputs, the largest sums included: float32 (and the TF32
    path's arithmetic) still gives the exact integer sums; two inputs more per window, and an odd sum beyond
    2**24 exists, which no float32 holds."""
    size = 16
    pixels, digits, expected = mixed.extreme_products(mixed.MAX_TAPS, size)
    widest = (pixels @ digits)[0, 0, 0]  # one digit's sum: what float32 adds up
    assert widest == -(255 * 128 * mixed.MAX_TAPS - 255) and widest % 2 == 1
    sums = mixed.exact_sums(torch.from_numpy(pixels).float(), torch.from_numpy(digits).float(), size)
    assert sums.dtype == torch.float64 and np.array_equal(sums.numpy(), expected.astype(np.float64))
    assert mixed.tf32_self_check(torch.device("cpu")) is None
    pixels, digits, expected = mixed.extreme_products(mixed.MAX_TAPS + 2, size)
    too_wide = mixed.exact_sums(torch.from_numpy(pixels).float(), torch.from_numpy(digits).float(), size)
    assert abs((pixels @ digits)[0, 0, 0]) > 2**24 and too_wide[0, 0, 0] != expected[0, 0, 0]


def test_windows_too_wide_for_exact_products_are_refused_and_never_routed_here(mixed) -> None:
    with pytest.raises(ValueError, match="too wide for exact float32 products"):
        mixed._Pass(np.array([30000]), np.array([224]), np.array([0]), 224, "bicubic", torch.device("cpu"))
    plan_of = lambda w, h: transform.resize_plan(w, h, 224)  # noqa: E731
    assert mixed.takes(640, 480, plan_of(640, 480), 2**21)
    assert not mixed.takes(640, 480, plan_of(640, 480), 640 * 480 - 1), "over the pixel limit"
    assert not mixed.takes(640, 480, plan_of(640, 480), 0), "0: every size on its own"
    assert not mixed.takes(30000, 30000, plan_of(30000, 30000), 2**40), "shrunk 134x: windows too wide"
    assert mixed.takes(22000, 22000, plan_of(22000, 22000), 2**40), "shrunk 98x"


def test_groups_stay_within_the_budget_largest_first(mixed) -> None:
    """The budget bounds the first product's input and its output (3 x 224 digit columns, wider than a narrow
    image's first pass)."""
    lengths = [(300, 200), (1000, 1000), (50, 40), (600, 500), (5000, 4000), (640, 480), (160, 700), (100, 800)]
    grouped = mixed.groups(lengths, 224, budget=1_200_000)
    assert sorted(i for group in grouped for i in group) == list(range(len(lengths)))
    assert grouped[0] == [4], "an image over the budget is a group alone, and the largest goes first"
    for group in grouped[1:]:
        widest = max(max(lengths[i][0] for i in group), 3 * 224) * max(lengths[i][1] for i in group)
        assert len(group) * widest <= 1_200_000, group
    narrow = mixed.groups([(160, 700), (100, 800)], 224, budget=1_000_000)
    assert narrow == [[0], [1]], "two of 672 digit columns x 800 rows are over the budget, though 160 x 800 is not"
    banners = mixed.groups([(3000, 2)] * 4, 224, budget=1_000_000)
    assert banners == [[0], [1], [2], [3]], "3000 inputs x 224 outputs of weights: one such image fills it"
    areas = [lengths[i][0] * lengths[i][1] for group in grouped for i in group]
    assert areas == sorted(areas, reverse=True)


def test_tf32_is_used_only_where_its_self_check_passes(mixed, monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert mixed.use_tf32(cpu) == (False, None), "the CPU has no TF32: plain float32"
    real = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: real(a, b) + 1)
    assert mixed.tf32_self_check(cpu) == "TF32 products gave other sums than the exact ones"
    monkeypatch.setattr(torch, "bmm", real)
    monkeypatch.setattr(mixed, "_tf32", {})
    monkeypatch.setattr(mixed, "tf32_self_check", lambda device: "TF32 products gave other sums than the exact ones")
    cuda = torch.device("cuda", 0)  # a device object is enough to pick the products
    assert mixed.use_tf32(cuda) == (False, "TF32 products gave other sums than the exact ones")
    monkeypatch.setattr(mixed, "tf32_self_check", lambda device: None)
    assert mixed.use_tf32(cuda)[0] is False, "decided once per device"
    assert mixed.use_tf32(torch.device("cuda", 1)) == (True, None)


def test_lone_new_sizes_are_resized_together_and_the_rest_size_by_size(gpu_transform, monkeypatch) -> None:
    """Routing in BatchPreprocessor: small JPEGs alone in their size with no cached weights take one mixed call
    when there are two or more; a size seen twice in the batch or recently, a big JPEG (over
    mixed_resize_max_pixels) and a lone new size take the per-size resize. Every way gives the exact path's
    pixels, in order."""
    pillow_resize = sys.modules["clip_pillow_resize"]
    batch = photos([(451, 300), (640, 480), (300, 451), (1000, 872), (640, 480), (17, 9)])
    images = [jpeg(photo, quality=90) for photo in batch]
    expected, _ = transform.preprocess_batch(images, 224)
    calls = {"mixed": [], "per-size": []}
    real_mixed, real_per_size = gpu_transform.resize_crop_mixed, gpu_transform.resize_crop

    def mixed_spy(images, plans, *args):
        calls["mixed"].append(sorted((image.shape[-1], image.shape[-2]) for image in images))
        return real_mixed(images, plans, *args)

    def per_size_spy(batch, *args):
        calls["per-size"].append((batch.shape[-1], batch.shape[-2], batch.shape[0]))
        return real_per_size(batch, *args)

    monkeypatch.setattr(gpu_transform, "resize_crop_mixed", mixed_spy)
    monkeypatch.setattr(gpu_transform, "resize_crop", per_size_spy)

    def routed(chosen: list[int], limit: int = 640 * 480) -> dict:
        calls["mixed"].clear(), calls["per-size"].clear()
        pre = gpu_transform.BatchPreprocessor(224, torch.device("cpu"), torch.float32, mixed_resize_max_pixels=limit)
        pixels, errors = pre([images[i] for i in chosen])
        pre.close()
        assert not errors and np.array_equal(pixels.numpy(), expected[chosen]), (chosen, limit)
        return {key: list(value) for key, value in calls.items()}

    everything = list(range(len(images)))
    monkeypatch.setattr(pillow_resize, "_matrices", type(pillow_resize._matrices)())  # nothing cached
    assert routed(everything) == {"mixed": [[(17, 9), (300, 451), (451, 300)]],
                                  "per-size": [(640, 480, 2), (1000, 872, 1)]}
    assert routed(everything, limit=0) == {"mixed": [], "per-size": [
        (451, 300, 1), (640, 480, 2), (300, 451, 1), (1000, 872, 1), (17, 9, 1)]}, "0: every size on its own"
    assert routed(everything)["mixed"] == [], "every size's weights are cached now"
    monkeypatch.setattr(pillow_resize, "_matrices", type(pillow_resize._matrices)())
    assert routed([0, 1, 4]) == {"mixed": [], "per-size": [(451, 300, 1), (640, 480, 2)]}, "one lone new size"


def test_the_default_limit_is_the_repositorys(mixed) -> None:
    from clip_triton_export.repository import RepositoryOptions

    assert RepositoryOptions(target="gpu").mixed_resize_max_pixels == mixed.DEFAULT_MAX_PIXELS == 2**21
