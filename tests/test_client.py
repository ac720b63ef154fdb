"""ClipClient against the real server: every input type, order across batches and concurrency, normalize,
streaming, metadata and argument checks."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_triton
from clip_triton import ClipClient, InvalidInputError, ServerUnavailableError
from clip_triton_serve import free_port
from client_support import assert_rows_distinct, distinct_images, golden_rows, image_paths
from conftest import IMAGE_NAMES, assert_features_match

pytestmark = pytest.mark.server


def _pil(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


INPUT_KINDS = {
    "str path": lambda p: str(p),
    "Path": lambda p: p,
    "bytes": lambda p: p.read_bytes(),
    "bytearray": lambda p: bytearray(p.read_bytes()),
    "memoryview": lambda p: memoryview(p.read_bytes()),
    "BytesIO": lambda p: io.BytesIO(p.read_bytes()),
    "open file": lambda p: open(p, "rb"),  # noqa: SIM115 (the client reads it; closed by the GC)
    "PIL image": _pil,
    "numpy HWC uint8": lambda p: np.asarray(_pil(p)),
}


@pytest.fixture(scope="module")
def client(vit_server):
    with ClipClient(vit_server.grpc_url) as client:
        yield client


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_every_input_type_gives_openais_features(client: ClipClient, kind: str) -> None:
    images = [INPUT_KINDS[kind](path) for path in image_paths()]
    features = client.encode(images)
    assert features.dtype == np.float32 and features.shape == (len(IMAGE_NAMES), 32)
    assert_features_match(features, golden_rows(IMAGE_NAMES))


def test_mixed_input_types_in_one_call(client: ClipClient) -> None:
    kinds = list(INPUT_KINDS.values())
    images = [kinds[i % len(kinds)](path) for i, path in enumerate(image_paths())]
    assert_features_match(client.encode(images, batch_size=3), golden_rows(IMAGE_NAMES))


def test_numpy_nhwc_batch_is_iterated_as_images(client: ClipClient) -> None:
    batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 48))) for p in image_paths()[:3]])
    one_by_one = client.encode(list(batch))
    np.testing.assert_array_equal(client.encode(batch), one_by_one)


@pytest.mark.parametrize(("batch_size", "concurrency"), [(1, 1), (7, 3), (16, 8), (64, 2)])
def test_rows_keep_input_order_across_batches_and_concurrency(client: ClipClient, batch_size: int,
                                                               concurrency: int) -> None:
    images = distinct_images(150)
    # Reference: each image encoded on its own request, in reverse order, so no batching can line up.
    reference = np.stack([client.encode([image])[0] for image in reversed(images)])[::-1]
    assert_rows_distinct(reference)
    features = client.encode(images, batch_size=batch_size, concurrency=concurrency)
    assert features.shape == reference.shape
    np.testing.assert_allclose(features, reference, rtol=1e-4, atol=1e-5)


def test_a_generator_streams_without_being_drained_up_front(client: ClipClient) -> None:
    images = distinct_images(300, side=24, seed=1)
    drawn = []

    def lazily():
        for image in images:
            drawn.append(1)
            yield image

    parts = client.iter_encode(lazily(), batch_size=8, concurrency=2)
    first = next(parts)
    assert first.count == 8 and list(first.indices) == list(range(8))
    # At most the 2 x concurrency requests of the window (plus the one being planned) have been read.
    assert len(drawn) <= 8 * (2 * 2 + 1) < len(images)
    rest = list(parts)
    assert len(drawn) == len(images)
    indices = np.concatenate([first.indices] + [part.indices for part in rest])
    np.testing.assert_array_equal(indices, np.arange(len(images)))


def test_normalize_gives_unit_rows_in_the_direction_of_the_raw_features(client: ClipClient) -> None:
    raw = client.encode(image_paths())
    unit = client.encode(image_paths(), normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_empty_input_gives_an_empty_matrix_of_the_right_width(client: ClipClient) -> None:
    assert client.encode([]).shape == (0, 32)


def test_progress_bar_counts_images(client: ClipClient, capsys: pytest.CaptureFixture) -> None:
    client.encode(image_paths(), batch_size=2, show_progress=True)
    assert "7/7" in capsys.readouterr().err


def test_metadata_comes_from_the_server(client: ClipClient) -> None:
    assert client.embedding_dim == 32
    assert client.input_resolution == 224
    assert client.max_batch_size == 64
    assert client.is_ready()
    client.wait_until_ready(timeout=5)


def test_readiness_of_a_server_that_is_not_there() -> None:
    with ClipClient(f"127.0.0.1:{free_port()}") as nobody:
        assert not nobody.is_ready()
        with pytest.raises(ServerUnavailableError, match="no server ready"):
            nobody.wait_until_ready(timeout=0.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda c: c.encode("astronaut.png"), "wrap the single astronaut.png in a list"),
     (lambda c: c.encode(np.zeros((8, 8, 3), np.uint8)), "NHWC"),
     (lambda c: c.encode(42), "iterable of images"),
     (lambda c: c.encode([b"x"], batch_size=65), "max_batch_size 64"),
     (lambda c: c.encode([b"x"], concurrency=0), "concurrency must be a positive integer"),
     (lambda c: c.encode([b"x"], on_error="ignore"), "on_error must be one of"),
     (lambda c: c.encode([b"x"], preprocess="gpu"), "preprocess must be one of"),
     (lambda c: c.encode_pixels(np.zeros((2, 3, 32, 32), np.float32)), "shape [N, 3, 224, 224]"),
     (lambda c: c.encode_pixels(np.zeros((2, 3, 224, 224), np.uint8)), "floating point")],
)
def test_wrong_arguments_are_refused_clearly(client: ClipClient, call, message: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        call(client)


def test_bad_connection_options_are_refused_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="without a scheme"):
        ClipClient("grpc://127.0.0.1:8001")
    with pytest.raises(InvalidInputError, match="compression must be one of"):
        ClipClient("127.0.0.1:8001", compression="brotli")
    with pytest.raises(InvalidInputError, match="no such file"):
        ClipClient("127.0.0.1:8001", ssl=True, root_certificates=tmp_path / "missing.pem")


def test_the_client_imports_no_torch_or_onnx_and_no_server_cli_or_demo_code() -> None:
    code = ("import sys, clip_triton; from clip_triton import ClipClient, AsyncClipClient; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime', "
            "'clip_triton_serve', 'clip_triton_cli', 'clip_triton_export')]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    package = Path(clip_triton.__file__).parent
    modules = sorted(path.stem for path in package.glob("*.py"))
    assert not set(modules) & {"server", "cli", "demo", "encode_command", "feature_file"}, modules
