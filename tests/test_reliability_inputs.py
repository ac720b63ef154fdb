"""Hostile input through the real server: each bad element refused alone with its reason, the server
stays ready, and good images sent with it keep their exact features (issue 5, "Bad input").

test_server.py already covers empty, truncated, header-only, random, text/HTML and the bomb inside a
shared dynamic batch; this adds the rest of the list and a batch mixing everything.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bad_inputs import bad_images, decompression_bomb_png
from clip_triton import contract
from clip_triton_serve import TritonServer
from conftest import IMAGE_NAMES, ROOT, assert_features_match, export_golden, golden_features, image_bytes, running_server
from crafted_inputs import animated, encode, frames, hostile_images
from test_server import assert_good_served_and_bad_refused, infer, interleaved_good_and_bad, send_concurrently

pytestmark = pytest.mark.server
GOOD = "chelsea.png"


def refusal(url: str, blobs: list[bytes], model: str = contract.ENSEMBLE_MODEL) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        infer(url, blobs, model)
    return caught.value


def preprocess_stub(server: TritonServer) -> int:
    return next(pid for pid, name in server.backend_stubs().items() if name.startswith(contract.PREPROCESS_MODEL))


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("name", sorted(hostile_images()))
def test_each_hostile_input_is_refused_alone_with_its_reason(vit_server: TritonServer, name: str) -> None:
    payload, reason = hostile_images()[name]
    stub = preprocess_stub(vit_server)
    error = refusal(vit_server.grpc_url, [image_bytes(GOOD), payload, image_bytes(GOOD)])
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "IMAGE[1]: " in error.message() and reason in error.message(), error.message()
    assert "IMAGE[0]" not in error.message() and "IMAGE[2]" not in error.message()
    assert vit_server.is_ready() and preprocess_stub(vit_server) == stub, "the stub must survive"
    assert_features_match(infer(vit_server.grpc_url, [image_bytes(GOOD)]), golden_features("tiny-vit-b32")[GOOD][None])


def test_pixel_limit_is_an_export_option(tmp_path: Path) -> None:
    # 451x300 = 135,300 pixels passes a 200,000-pixel limit; 512x512 = 262,144 does not.
    with running_server(export_golden(tmp_path, "tiny-vit-b32", max_image_pixels=200_000)) as server:
        error = refusal(server.grpc_url, [image_bytes("astronaut.png")])
        accepted = infer(server.grpc_url, [image_bytes(GOOD)])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "image is 512x512 = 262144 pixels, over the limit of 200000" in error.message()
    assert_features_match(accepted, golden_features("tiny-vit-b32")[GOOD][None])


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animated_image_is_encoded_from_its_first_frame(vit_server: TritonServer, fmt: str) -> None:
    first, second, _ = (encode(frame, fmt) for frame in frames())
    served = infer(vit_server.grpc_url, [animated(fmt), first, second])
    np.testing.assert_allclose(served[0], served[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(served[0], served[2], rtol=1e-2), "frames must differ for this test to mean anything"


def test_decompression_bomb_is_refused_without_allocating_its_pixels(vit_server: TritonServer) -> None:
    """60000x60000 (3.6 gigapixels, 3.6 GB decoded as mode "1"): the stub's peak memory must not move."""
    stub = preprocess_stub(vit_server)
    before = peak_rss_bytes(stub)
    error = refusal(vit_server.grpc_url, [decompression_bomb_png(60000)])
    growth = peak_rss_bytes(stub) - before
    assert "over the limit of 178956970" in error.message()
    assert growth < 64 * 2**20, f"the stub's peak RSS grew by {growth / 2**20:.0f} MiB"
    assert vit_server.is_ready() and preprocess_stub(vit_server) == stub


MEASURE_PEAK = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from clip_triton.transform import ImageRejected, open_image

    def status(field):
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
        return int(line.split()[1]) * 1024

    payload = Path(sys.argv[2]).read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS:")
    try:
        open_image(payload).load()
    except ImageRejected as error:
        print("refused:", error, file=sys.stderr)
    print(status("VmHWM:") - before)
""")


def peak_growth_opening(payload: bytes, directory: Path) -> int:
    """Peak-RSS growth (bytes) of a fresh interpreter (Pillow and numpy only) opening and decoding `payload`."""
    path = directory / "payload"
    path.write_bytes(payload)
    result = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(ROOT / "client"), str(path)],
                            capture_output=True, text=True, timeout=120, check=True)
    return int(result.stdout.split()[-1])


def test_open_image_refuses_the_bomb_without_allocating_while_a_real_decode_would(tmp_path: Path) -> None:
    # The control is the same kind of file at 12000x12000 (under the limit): decoding it allocates 144 MB,
    # which must show up in the measurement, or the bomb's small figure would prove nothing.
    assert peak_growth_opening(decompression_bomb_png(12000), tmp_path) > 100 * 2**20
    assert peak_growth_opening(decompression_bomb_png(60000), tmp_path) < 16 * 2**20


@pytest.mark.parametrize(
    ("datatype", "shape", "reason"),
    [("FP64", [1, 3, 224, 224], "data-type is 'FP64', but model 'clip_visual' expects 'FP32'"),
     ("FP32", [1, 3, 112, 112], "unexpected shape"),
     ("FP32", [1, 224, 224, 3], "unexpected shape"),
     ("INT8", [2, 3, 224, 224], "data-type is 'INT8', but model 'clip_visual' expects 'FP32'")],
)
def test_wrong_dtype_or_shape_straight_to_clip_visual_is_refused(vit_server: TritonServer, datatype: str,
                                                                 shape: list[int], reason: str) -> None:
    client = grpcclient.InferenceServerClient(vit_server.grpc_url)
    try:
        tensor = grpcclient.InferInput(contract.PIXELS_TENSOR, shape, datatype)
        tensor.set_data_from_numpy(np.zeros(shape, dtype={"FP64": np.float64, "FP32": np.float32, "INT8": np.int8}[datatype]))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(contract.VISUAL_MODEL, [tensor])
        assert client.is_model_ready(contract.VISUAL_MODEL)
    finally:
        client.close()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert reason in caught.value.message(), caught.value.message()


def test_a_batch_mixing_every_bad_input_with_good_images(tmp_path: Path) -> None:
    """Every kind of bad input, one per request, gathered into the same dynamic batches as the good images."""
    bad = {**bad_images(), **hostile_images()}
    good = {name: image_bytes(name) for name in IMAGE_NAMES}
    items = interleaved_good_and_bad(good, bad)
    expected = golden_features("tiny-vit-b32")
    with running_server(export_golden(tmp_path, "tiny-vit-b32", preprocess_queue_delay_us=500_000)) as server:
        results = send_concurrently(server.grpc_url, items)
        # The same mix as one multi-element request: every bad element named, no good one.
        together = refusal(server.grpc_url, [data for _, data in items]).message()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        stats = client.get_inference_statistics(contract.PREPROCESS_MODEL, as_json=True)["model_stats"][0]
        client.close()
        assert server.is_ready()

    assert int(stats["execution_count"]) < len(items) + 1, "requests were not batched together"
    assert_good_served_and_bad_refused(results, bad, expected)
    for index, (label, _) in enumerate(items):
        assert (f"IMAGE[{index}]: " in together) == label.startswith("bad:"), (index, label)
