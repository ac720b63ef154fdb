"""The real Triton server, over gRPC: OpenAI's features for every golden checkpoint and format, and bad
images refused one by one inside the same dynamic batch as good ones."""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bad_inputs import bad_images
from clip_triton import contract
from clip_triton.client import ClipClient
from conftest import (IMAGE_NAMES, IMAGES, assert_features_match, export_golden, golden_features, image_bytes,
                      preprocess_window, running_server, settled_preprocess_totals)

pytestmark = pytest.mark.server


def infer(url: str, blobs: list[bytes], model: str = contract.ENSEMBLE_MODEL) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("IMAGE", [len(blobs), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
        return client.infer(model, [tensor]).as_numpy("EMBEDDING")
    finally:
        client.close()


def send_concurrently(url: str, items: list[tuple[str, bytes]]) -> list[tuple[str, np.ndarray | None, Exception | None]]:
    """Each (label, image) as its own single-image request, all at once: (label, features, error) each."""
    def send(item: tuple[str, bytes]):
        try:
            return item[0], infer(url, [item[1]]), None
        except InferenceServerException as error:
            return item[0], None, error

    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(send, items))


def interleaved_good_and_bad(good: dict[str, bytes], bad: dict[str, tuple[bytes, str]]) -> list[tuple[str, bytes]]:
    """("good:<name>" / "bad:<name>", image) items, good and bad alternating, for one shared dynamic batch."""
    items = [(f"good:{n}", data) for n, data in good.items()] + [(f"bad:{n}", data) for n, (data, _) in bad.items()]
    return items[::2] + items[1::2]


def assert_good_served_and_bad_refused(results, bad: dict[str, tuple[bytes, str]], expected: dict[str, np.ndarray]) -> None:
    """Every good image got OpenAI's features; every bad one got INVALID_ARGUMENT with its reason, and no features."""
    for label, features, error in results:
        kind, name = label.split(":", 1)
        if kind == "good":
            assert error is None, (name, error)
            assert_features_match(features, expected[name][None])
        else:
            assert features is None, f"{name} received a feature vector"
            assert error.status() == "StatusCode.INVALID_ARGUMENT", (name, error)
            assert bad[name][1] in error.message(), (name, error.message())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("checkpoint", ["tiny-vit-b32", "tiny-rn"])
def test_served_features_equal_openai_encode_image(checkpoint: str, fmt: str, tmp_path: Path) -> None:
    expected = golden_features(checkpoint)
    with running_server(export_golden(tmp_path, checkpoint, fmt)) as server:
        together = infer(server.grpc_url, [image_bytes(n) for n in IMAGE_NAMES])
        one_by_one = np.concatenate([infer(server.grpc_url, [image_bytes(n)]) for n in IMAGE_NAMES])
        with ClipClient(server.grpc_url) as client:
            via_client = client.encode([IMAGES / n for n in IMAGE_NAMES])
    reference = np.stack([expected[n] for n in IMAGE_NAMES])
    for features in (together, one_by_one, via_client):
        assert features.dtype == np.float32
        assert_features_match(features, reference)


def test_model_metadata_follows_the_contract(vit_server) -> None:
    client = grpcclient.InferenceServerClient(vit_server.grpc_url)
    ensemble = client.get_model_metadata(contract.ENSEMBLE_MODEL, as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in ensemble["inputs"]] == [("IMAGE", "BYTES", ["-1", "1"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in ensemble["outputs"]] == [("EMBEDDING", "FP32", ["-1", "32"])]
    visual = client.get_model_metadata(contract.VISUAL_MODEL, as_json=True)
    assert [(t["name"], t["shape"]) for t in visual["inputs"]] == [("PIXEL_VALUES", ["-1", "3", "224", "224"])]
    client.close()


def test_bad_images_fail_alone_in_a_shared_dynamic_batch(tmp_path: Path) -> None:
    # A long preprocessing queue delay makes the dynamic batcher gather the concurrent requests below.
    repository = export_golden(tmp_path, "tiny-vit-b32", preprocess_queue_delay_us=300_000)
    bad = bad_images()
    good = {name: image_bytes(name) for name in IMAGE_NAMES}
    requests = interleaved_good_and_bad(good, bad)
    expected = golden_features("tiny-vit-b32")
    with running_server(repository) as server:
        results = send_concurrently(server.grpc_url, requests)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        stats = client.get_inference_statistics(contract.PREPROCESS_MODEL, as_json=True)["model_stats"][0]
        assert client.is_server_ready() and client.is_model_ready(contract.ENSEMBLE_MODEL)
        after = infer(server.grpc_url, [good["chelsea.png"]])  # still serving correctly afterwards
        client.close()

    assert int(stats["execution_count"]) < len(requests), "requests were not batched together"
    assert_good_served_and_bad_refused(results, bad, expected)
    assert all("IMAGE[0]" in error.message() for _, _, error in results if error is not None)
    assert_features_match(after, expected["chelsea.png"][None])


def test_one_request_with_good_and_bad_elements_names_each_bad_element(vit_server) -> None:
    blobs = [image_bytes("horse.png"), b"", image_bytes("coffee.png"), b"not an image"]
    with pytest.raises(InferenceServerException) as caught:
        infer(vit_server.grpc_url, blobs)
    message = caught.value.message()
    assert "IMAGE[1]: empty input" in message and "IMAGE[3]: not a recognised image format" in message
    assert "IMAGE[0]" not in message and "IMAGE[2]" not in message


def test_client_isolates_bad_images_and_names_them(vit_server) -> None:
    from clip_triton import InvalidImageError

    with ClipClient(vit_server.grpc_url) as client, pytest.raises(InvalidImageError) as caught:
        client.encode([IMAGES / "horse.png", b"", IMAGES / "coffee.png"])
    failures = caught.value.failures
    assert [f.index for f in failures] == [1] and "empty input" in failures[0].reason
    assert list(caught.value.result.indices) == [0, 2]  # the good features are kept


@pytest.mark.parametrize("arch", ["ViT-B/32", "RN50"])
def test_full_size_architectures_serve_what_eager_torch_computes(arch: str, tmp_path: Path) -> None:
    import torch

    from clip_triton.transform import preprocess
    from clip_triton_export.pipeline import export_repository, load_source

    export_repository(tmp_path, random_init=arch)
    loaded = load_source(None, arch)
    pixels = np.stack([preprocess(image_bytes(n), loaded.spec.image_resolution) for n in IMAGE_NAMES])
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(pixels)).numpy()
    with running_server(tmp_path) as server:
        served = infer(server.grpc_url, [image_bytes(n) for n in IMAGE_NAMES])
    assert served.shape == (len(IMAGE_NAMES), loaded.spec.embed_dim)
    assert_features_match(served, expected)


def test_preprocessing_metrics_count_served_and_refused_images(vit_server) -> None:
    """The CPU target's clip_preprocess publishes the same counters with its own stages: every image takes the
    exact CPU path or is refused."""
    before = settled_preprocess_totals(vit_server.metrics_url)
    assert set(before["seconds"]) == {"read_inputs", "cpu_path", "respond"} and set(before["images"]) == {"cpu", "refused"}
    infer(vit_server.grpc_url, [image_bytes(name) for name in IMAGE_NAMES])
    with pytest.raises(InferenceServerException):
        infer(vit_server.grpc_url, [image_bytes("horse.png"), b""])
    seen = preprocess_window(vit_server.metrics_url, before, len(IMAGE_NAMES) + 2)
    assert seen["images"] == {"cpu": len(IMAGE_NAMES) + 1, "refused": 1}
    assert all(value > 0 for value in seen["ms_per_image"].values()), seen
