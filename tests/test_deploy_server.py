"""The deployment against a real Triton: the container's entrypoint runs the local tritonserver (the same
2.51 as the pinned image), and every metric the dashboard and the autoscaler read must be one it
exports, or one Triton documents for GPUs (there is no GPU here)."""
from __future__ import annotations

import json
import os
import signal
import time
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from clip_triton import contract
from clip_triton_serve.options import ADMIN_HEADER
from conftest import IMAGES, export_golden
from deploy_support import (ADMIN_KEY, APPLY_OVERRIDES, HEALTHCHECK, K8S, entrypoint_server, http, label_names,
                            load_script, load_yaml, parse_exposition, selectors)
from test_deploy_monitoring import dashboard_queries

pytestmark = pytest.mark.server

# GPU metrics Triton exports when it sees a GPU, as its metrics documentation lists them ("GPU Metrics",
# docs/user_guide/metrics.md in triton-inference-server/server; collected through DCGM, one series per
# GPU, labelled gpu_uuid). No GPU here, so the local server cannot show them.
DOCUMENTED_GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                          "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"}
DOCUMENTED_GPU_LABELS = {"gpu_uuid"}
# Labels Prometheus itself attaches to every scraped series (compose: job, instance; Kubernetes adds
# namespace, pod, service, ... through the ServiceMonitor).
PROMETHEUS_TARGET_LABELS = {"job", "instance"}
KUBERNETES_TARGET_LABELS = {"namespace", "pod"}
# NGC image tag -> the Triton release inside it (Triton's release notes: 24.10 ships Triton 2.51.0).
TRITON_IN_IMAGE = {"24.10": "2.51.0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    repository = export_golden(tmp_path_factory.mktemp("deploy-repo"), "tiny-vit-b32")
    (repository / ".clip-triton-build").write_text("stamp")  # the builder's stamp must not upset Triton
    with entrypoint_server(repository, CLIP_TRITON_ADMIN_KEY=ADMIN_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def exported(server) -> dict[str, set[str]]:
    """Series the server exports after one inference through the ensemble: name -> label names."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        image = grpcclient.InferInput(contract.IMAGE_INPUT, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[(IMAGES / "astronaut.png").read_bytes()]], dtype=object))
        result = client.infer(contract.ENSEMBLE_MODEL, [image],
                              outputs=[grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)])
        assert result.as_numpy(contract.EMBEDDING_OUTPUT).shape == (1, 32)
    status, body = http("GET", server.metrics_url)
    assert status == 200
    series: dict[str, set[str]] = {}
    for name, labels in parse_exposition(body.decode()):
        series.setdefault(name, set()).update(labels)
    return series


@pytest.fixture(scope="module")
def label_values(server, exported) -> dict[str, set[str]]:
    _, body = http("GET", server.metrics_url)
    values: dict[str, set[str]] = {}
    for _, labels in parse_exposition(body.decode()):
        for label, value in labels.items():
            values.setdefault(label, set()).add(value)
    return values


def unknown_metrics(queries: list[str], exported: dict[str, set[str]]) -> set[str]:
    return {s.name for q in queries for s in selectors(q)} - set(exported) - DOCUMENTED_GPU_METRICS


def test_dashboard_reads_only_metrics_triton_exports(exported):
    assert not unknown_metrics(dashboard_queries(), exported)
    # and the check bites: a plausible but wrong name is caught
    assert unknown_metrics(["rate(nv_inference_queue_time_us[1m])"], exported) == {"nv_inference_queue_time_us"}


def test_dashboard_filters_and_groups_only_by_labels_that_exist(exported):
    known = set().union(*exported.values()) | DOCUMENTED_GPU_LABELS | PROMETHEUS_TARGET_LABELS
    used = set().union(*(label_names(q) for q in dashboard_queries()))
    assert used <= known, used - known


def test_dashboard_model_filters_name_real_models(label_values):
    board_text = json.dumps(json.loads((Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
                                        / "clip-triton.json").read_text()))
    for model in (contract.ENSEMBLE_MODEL,):
        assert model in board_text and model in label_values["model"]


def _adapter_queries() -> list[str]:
    rule, = load_yaml(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    series = rule["seriesQuery"]
    (selector,) = selectors(series)
    # The adapter's Go templates, filled in as it does for `kubectl get --raw .../pods/*/clip_triton_queue_time_us`.
    query = (rule["metricsQuery"].replace("<<.Series>>", selector.name)
             .replace("<<.LabelMatchers>>", 'namespace="clip-triton",pod=~"clip-triton-.*"')
             .replace("<<.GroupBy>>", "pod"))
    return [series, query]


def test_autoscaler_metric_query_reads_only_exported_series_and_real_models(exported, label_values):
    queries = _adapter_queries()
    assert not unknown_metrics(queries, exported)
    known = set().union(*exported.values()) | KUBERNETES_TARGET_LABELS
    assert set().union(*(label_names(q) for q in queries)) <= known
    for query in queries:
        for selector in selectors(query):
            for matcher in selector.matchers.matchers:
                if matcher.name == "model":
                    names = matcher.value.split("|")
                    assert set(names) <= label_values["model"], names


def test_pinned_image_runs_the_triton_the_tests_run(server):
    status, body = http("GET", f"{server.http_url}/v2")
    assert status == 200
    tag = "24.10"
    assert f"nvcr.io/nvidia/tritonserver:{tag}-py3" in (K8S.parent / "docker" / "triton.Dockerfile").read_text()
    assert json.loads(body)["version"] == TRITON_IN_IMAGE[tag]


def test_container_healthcheck_passes_on_a_ready_server(server):
    env = {**os.environ, "HTTP_PORT": str(server.ports["HTTP_PORT"])}
    assert subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30).returncode == 0


def test_admin_protocols_need_the_key_over_http_and_grpc(server):
    index = f"{server.http_url}/v2/repository/index"
    assert http("POST", index, body=b"{}")[0] == 403
    assert http("POST", index, headers={ADMIN_HEADER: "wrong"}, body=b"{}")[0] == 403
    assert http("POST", index, headers={ADMIN_HEADER: ADMIN_KEY}, body=b"{}")[0] == 200
    # Over gRPC, Triton 2.51 expects the header name with a "triton-grpc-protocol-" prefix (it says so
    # in its refusal); the bare name is refused.
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers={ADMIN_HEADER: ADMIN_KEY})
        grpc_header = f"triton-grpc-protocol-{ADMIN_HEADER}"
        assert client.get_model_repository_index(headers={grpc_header: ADMIN_KEY}).models
        assert client.is_server_ready()  # health and inference stay open


def test_model_control_stays_none_even_with_the_key(server):
    status, body = http("POST", f"{server.http_url}/v2/repository/models/{contract.VISUAL_MODEL}/unload",
                        headers={ADMIN_HEADER: ADMIN_KEY}, body=b"{}")
    assert status != 200, body
    assert http("GET", f"{server.http_url}/v2/health/ready")[0] == 200


def test_shared_cluster_settings_run_on_the_real_server(tmp_path: Path):
    """The overlay's flags and rate-limiter config, as documented, on a real server (CPU here, not GPU)."""
    repository = export_golden(tmp_path / "repo", "tiny-vit-b32")
    override = text_format.Parse((K8S / "shared-cluster" / "clip_visual.pbtxt").read_text(), pb.ModelConfig())
    for group in override.instance_group:
        group.kind = pb.ModelInstanceGroup.KIND_CPU  # the only difference: no GPU on this machine
    config_path = repository / contract.VISUAL_MODEL / "config.pbtxt"
    config = load_script(APPLY_OVERRIDES).apply_override(text_format.Parse(config_path.read_text(), pb.ModelConfig()), override)
    config_path.write_text(text_format.MessageToString(config))
    patch = load_yaml(K8S / "shared-cluster" / "deployment-patch.yaml")
    (triton,) = patch["spec"]["template"]["spec"]["containers"]
    with entrypoint_server(repository, triton["args"], CLIP_TRITON_ADMIN_KEY=ADMIN_KEY) as running:
        unload = f"{running.http_url}/v2/repository/models/{contract.ENSEMBLE_MODEL}/unload"
        load = f"{running.http_url}/v2/repository/models/{contract.ENSEMBLE_MODEL}/load"
        assert http("POST", unload, body=b"{}")[0] == 403  # explicit control, still behind the key
        assert http("POST", unload, headers={ADMIN_HEADER: ADMIN_KEY}, body=b"{}")[0] == 200
        assert http("GET", f"{running.http_url}/v2/models/{contract.ENSEMBLE_MODEL}/ready")[0] != 200
        assert http("POST", load, headers={ADMIN_HEADER: ADMIN_KEY}, body=b"{}")[0] == 200
        assert http("GET", f"{running.http_url}/v2/models/{contract.ENSEMBLE_MODEL}/ready")[0] == 200
        status, body = http("GET", f"{running.http_url}/v2/models/{contract.VISUAL_MODEL}/config")
        assert json.loads(body)["instance_group"][0]["rate_limiter"]["resources"][0]["name"] == "clip_gpu_slot"


def test_entrypoint_drains_then_stops_on_sigterm_and_exits_1_when_a_stub_dies(tmp_path: Path) -> None:
    """The container's PID 1 supervises Triton: SIGTERM lets in-flight ensemble requests finish, and a dead
    Python-backend stub (which Triton 2.51 neither restarts nor reports) ends the container with 1."""
    import concurrent.futures

    from clip_triton_serve.procfs import child_processes
    from conftest import image_bytes
    from test_server import infer

    repository = export_golden(tmp_path / "slow", "tiny-vit-b32", preprocess_queue_delay_us=1_500_000)
    with entrypoint_server(repository) as server, concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(infer, server.grpc_url, [image_bytes("horse.png")]) for _ in range(4)]
        time.sleep(0.5)  # the requests now wait in the 1.5 s batching window
        server.process.send_signal(signal.SIGTERM)  # only PID 1, as docker and the kubelet do
        assert all(f.result(timeout=60).shape == (1, 32) for f in futures)
        assert server.process.wait(60) == 0

    with entrypoint_server(export_golden(tmp_path / "fast", "tiny-vit-b32")) as server:
        time.sleep(1.5)  # the supervisor records the stubs once the server is ready
        triton = next(iter(child_processes(server.process.pid)))
        stub = next(pid for pid, argv in child_processes(triton).items() if "clip_preprocess_0_0" in argv)
        os.kill(stub, signal.SIGKILL)
        assert server.process.wait(30) == 1
        assert "a Python backend stub died" in server.log.read_text()
