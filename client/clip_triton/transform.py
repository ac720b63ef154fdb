"""OpenAI's CLIP image transform, reproduced with Pillow and numpy only.

`clip.load` preprocesses with torchvision: Resize(n, bicubic) -> CenterCrop(n) -> RGB -> [0, 1]
float CHW -> Normalize(CLIP mean/std). This module performs the same Pillow calls in the same order
(so results are bit-identical where Pillow does the work) and the arithmetic in float32 numpy.

It is the one implementation of the transform: the server's `clip_preprocess` model ships a copy of
this file, and the client imports it for `preprocess="client"`. It therefore depends on nothing but
Pillow, numpy and the standard library, and must stay importable as a single file. One optional
accelerator: with `pyspng` installed, plain 8-bit PNGs are decoded by libspng (2-3x faster than
Pillow's decoder). PNG is lossless, so the pixels are the same either way (the tests compare them).

A checkpoint that was trained with other preprocessing (another mean/std, a bilinear resize, a resize
larger than the crop, Hugging Face's floor-rounded crop offsets and RGB conversion first) says so in a
`Preprocessing`; its defaults are OpenAI's, and with them every result is exactly what it was before.
"""
from __future__ import annotations

import functools
import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    import pyspng
except ImportError:  # optional: Pillow decodes every PNG without it
    pyspng = None

MapImages = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]  # builtin map, or Executor.map

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)
# normalize() as a table: each channel's 256 possible results, computed with the very float32 operations
# (x / 255 - mean) / std that torchvision's ToTensor + Normalize perform, so a lookup is bit-identical.
_NORMALIZED = ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - CLIP_MEAN) / CLIP_STD).T.copy()
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FAST_MODES = {0: "L", 2: "RGB", 6: "RGBA"}  # 8-bit PNG colour types libspng hands over as they are
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485  # Pillow's own decompression-bomb error threshold
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024  # far above any real photo file; bounds what one element may cost
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
CROP_OFFSETS = ("round", "floor")  # torchvision's CenterCrop (half to even) / HF's CLIPImageProcessor (floor)
CONVERT_RGB = ("after_crop", "before_resize")  # OpenAI and open_clip / HF's CLIPImageProcessor


class ImageRejected(ValueError):
    """An input that is not an image we can (or may) decode; the message says why."""


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint wants its pixels made; every default is OpenAI's `_transform`.

    Shipped as string parameters of the models' configs (`parameters()` / `from_parameters`), so the
    server's clip_preprocess and a client preprocessing locally read the same values.
    """

    mean: tuple[float, float, float] = tuple(float(v) for v in CLIP_MEAN)
    std: tuple[float, float, float] = tuple(float(v) for v in CLIP_STD)
    interpolation: str = "bicubic"
    resize: int = 0  # the shorter side before the centre crop; 0 = the crop size, as OpenAI's
    crop_offsets: str = "round"
    convert_rgb: str = "after_crop"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # held as float32 values: the transform computes in float32 (as torchvision)
            values = tuple(float(np.float32(v)) for v in getattr(self, name))
            if len(values) != 3 or (name == "std" and min(values) <= 0):
                raise ValueError(f"image {name} must be 3 numbers{' above 0' if name == 'std' else ''}, got {values}")
            object.__setattr__(self, name, values)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not supported; choose {', '.join(INTERPOLATIONS)}")
        if self.crop_offsets not in CROP_OFFSETS or self.convert_rgb not in CONVERT_RGB:
            raise ValueError(f"crop_offsets must be one of {CROP_OFFSETS} and convert_rgb one of {CONVERT_RGB}")
        if self.resize < 0:
            raise ValueError(f"resize must be 0 (the crop size) or a positive size, got {self.resize}")

    @property
    def is_openai(self) -> bool:
        return self == OPENAI_PREPROCESSING

    def resize_for(self, size: int) -> int:
        return self.resize or size

    def parameters(self) -> dict[str, str]:
        """As the models' config parameters (float32's shortest decimals, which read back exactly)."""
        return {f"image_{key}" if key in ("mean", "std") else key: ",".join(str(np.float32(v)) for v in value)
                if isinstance(value, tuple) else str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "Preprocessing":
        """Read `parameters()` back; absent keys keep OpenAI's values (configs written before they existed)."""
        values: dict[str, Any] = {}
        for key in ("mean", "std"):
            if parameters.get(f"image_{key}"):
                values[key] = tuple(float(v) for v in parameters[f"image_{key}"].split(","))
        for key in ("interpolation", "crop_offsets", "convert_rgb"):
            if parameters.get(key):
                values[key] = parameters[key]
        if parameters.get("resize"):
            values["resize"] = int(parameters["resize"])
        return cls(**values)


OPENAI_PREPROCESSING = Preprocessing()


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """Open encoded bytes like `PIL.Image.open`, refusing unsafe sizes before any pixel is decoded.

    Pillow parses only the header here; the pixel limit is checked on the declared size, so a
    decompression bomb is refused without allocating its pixels.
    """
    if len(data) == 0:
        raise ImageRejected("empty input (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected(f"input is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"decompression bomb refused: {error}") from None
    except UnidentifiedImageError:
        known = next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)
        if known:
            raise ImageRejected(f"cannot decode {known} data (truncated or corrupt header)") from None
        raise ImageRejected(f"not a recognised image format (starts with {data[:12]!r})") from None
    except Exception as error:  # Pillow raises many types for foreign data
        raise ImageRejected(f"not a decodable image: {_describe(error)}") from None
    check_declared_size(*image.size, max_pixels)
    return image


def check_declared_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose header declares no pixels or more than `max_pixels`."""
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )


def decode_png_fast(image: Image.Image, data: bytes) -> Image.Image:
    """Decode a plain 8-bit grey/RGB/RGBA PNG with libspng, if installed; otherwise return `image` as is.

    Only where libspng's output is by definition what Pillow would decode: 8 bits per sample, no palette,
    no tRNS chunk (Pillow keeps that as transparency info). Anything else, or any error, is left to Pillow,
    so refusals and their messages do not change.
    """
    if pyspng is None or image.format != "PNG" or len(data) < 33 or not data.startswith(_PNG_SIGNATURE):
        return image
    bit_depth, colour_type = data[24], data[25]
    mode = _PNG_FAST_MODES.get(colour_type)
    if bit_depth != 8 or mode != image.mode or "transparency" in image.info:
        return image
    try:
        pixels = pyspng.load(data)
    except Exception:  # truncated or corrupt: Pillow decodes it and says what is wrong
        return image
    expected = (image.height, image.width) + ((len(mode),) if len(mode) > 1 else ())
    if pixels.dtype != np.uint8 or pixels.shape != expected:
        return image
    return Image.frombuffer(mode, image.size, np.ascontiguousarray(pixels), "raw", mode, 0, 1)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int) on a PIL image: shorter side -> `size`, longer side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_plan(width: int, height: int, size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                preprocessing: Preprocessing = OPENAI_PREPROCESSING) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop top, crop left) of Resize(resize) then CenterCrop(size), refusing an
    aspect ratio so extreme that the resized image would exceed `max_pixels`. CenterCrop's offsets use
    Python's round (half to even), as torchvision does, or floor, as HF's CLIPImageProcessor does."""
    new_width, new_height = resized_size(width, height, preprocessing.resize_for(size))
    if new_width * new_height > max_pixels:
        raise ImageRejected(
            f"aspect ratio too extreme: {width}x{height} would be resized to {new_width}x{new_height}"
        )
    if preprocessing.crop_offsets == "floor":
        return new_width, new_height, (new_height - size) // 2, (new_width - size) // 2
    return new_width, new_height, int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))


def draft_for_size(image: Image.Image, size: int) -> Image.Image:
    """Opt-in fast path for big JPEGs: let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT-domain
    downscaling), keeping the shorter side at least twice `size` so the bicubic resize still does the
    real filtering. Not bit-exact with OpenAI's transform (features agree to cosine >= 0.999); other
    formats are left untouched.
    """
    if image.format != "JPEG":
        return image
    width, height = image.size
    scale = 2 * size / min(width, height)
    if scale < 0.5:
        image.draft(image.mode, (int(width * scale) + 1, int(height * scale) + 1))
    return image


def resize_and_crop(image: Image.Image, size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                    fast_jpeg: bool = False, preprocessing: Preprocessing = OPENAI_PREPROCESSING) -> np.ndarray:
    """Resize(size, bicubic) -> CenterCrop(size) -> convert("RGB"), as HWC uint8 (or as `preprocessing` says:
    another filter or resize size, floor crop offsets, the RGB conversion first).

    The RGB conversion comes last, as in OpenAI's pipeline: grayscale, palette, RGBA, CMYK and
    16-bit images are resized in their own mode. Pillow itself uses nearest-neighbour for modes
    "1" and "P". The shorter side always becomes `size` and the longer side is at least that, so
    CenterCrop never needs torchvision's zero padding here. `fast_jpeg` opts into `draft_for_size`.
    """
    if fast_jpeg:
        image = draft_for_size(image, preprocessing.resize_for(size))
    width, height = image.size
    new_width, new_height, top, left = resize_plan(width, height, size, max_pixels, preprocessing)
    try:
        if preprocessing.convert_rgb == "before_resize":
            image = image.convert("RGB")
        if (new_width, new_height) != (width, height):
            image = image.resize((new_width, new_height), INTERPOLATIONS[preprocessing.interpolation])
        image = image.crop((left, top, left + size, top + size)).convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    except ImageRejected:
        raise
    except Exception as error:  # truncated or corrupt data surfaces when pixels are decoded
        raise ImageRejected(f"cannot decode image data: {_describe(error)}") from None


@functools.lru_cache(maxsize=8)
def _normalized_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """_NORMALIZED for another mean/std, with the same float32 operations."""
    if (mean, std) == (OPENAI_PREPROCESSING.mean, OPENAI_PREPROCESSING.std):
        return _NORMALIZED
    mean32, std32 = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)
    return ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - mean32) / std32).T.copy()


def normalize(rgb: np.ndarray, preprocessing: Preprocessing = OPENAI_PREPROCESSING) -> np.ndarray:
    """HWC (or NHWC) uint8 -> CHW (or NCHW) float32, scaled to [0, 1] and normalized with CLIP's stats
    (or the checkpoint's mean/std).

    Vectorized over the whole batch: one table lookup per channel, straight into the CHW layout
    (bit-identical to computing (x / 255 - mean) / std, and about 2.5x faster).
    """
    table = _normalized_table(preprocessing.mean, preprocessing.std)
    pixels = np.empty(rgb.shape[:-3] + (3,) + rgb.shape[-3:-1], dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], rgb[..., channel], out=pixels[..., channel, :, :], mode="clip")
    return pixels


def preprocess(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, fast_jpeg: bool = False,
               preprocessing: Preprocessing = OPENAI_PREPROCESSING) -> np.ndarray:
    """One encoded image -> float32 [3, size, size], exactly OpenAI's `_transform(size)` unless `fast_jpeg`
    (or the checkpoint's own `preprocessing`)."""
    image = decode_png_fast(open_image(data, max_pixels), data)
    return normalize(resize_and_crop(image, size, max_pixels, fast_jpeg, preprocessing), preprocessing)


def preprocess_batch(
    images: Sequence[bytes], size: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, fast_jpeg: bool = False, map_images: MapImages = map,
    preprocessing: Preprocessing = OPENAI_PREPROCESSING,
) -> tuple[np.ndarray, dict[int, str]]:
    """Many encoded images -> float32 [M, 3, size, size] for the good ones, plus {index: reason} for the bad.

    Headers are read here, one image after another (cheap, and Pillow's warning filters are not
    thread-safe); decoding and resizing go through `map_images`, which may be a thread pool's `map`:
    Pillow and libspng release the GIL while they work, so one batch's images decode on several cores.
    The float conversion runs once over the batch.
    """
    opened: list[tuple[Image.Image, bytes]] = []
    indices: list[int] = []
    errors: dict[int, str] = {}
    for index, data in enumerate(images):
        try:
            opened.append((open_image(data, max_pixels, max_bytes), data))
            indices.append(index)
        except ImageRejected as error:
            errors[index] = str(error)

    def crop(item: tuple[Image.Image, bytes]) -> np.ndarray | ImageRejected:
        try:
            return resize_and_crop(decode_png_fast(*item), size, max_pixels, fast_jpeg, preprocessing)
        except ImageRejected as error:
            return error

    crops: list[np.ndarray] = []
    for index, result in zip(indices, map_images(crop, opened)):
        if isinstance(result, ImageRejected):
            errors[index] = str(result)
        else:
            crops.append(result)
    if not crops:
        return np.zeros((0, 3, size, size), dtype=np.float32), errors
    return normalize(np.stack(crops), preprocessing), errors


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
