"""docker-compose.yml and its images, checked without Docker: the Compose Specification schema, every
file it names, and the settings the GPU host depends on."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from deploy_support import DEPLOY, ROOT, compose

# Compose's ${VAR:-default} / ${VAR:?error} / ${VAR}: what a run with no variables set resolves to.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def resolve(text: str) -> str:
    return _VARIABLE.sub(lambda m: m.group(3) if m.group(2) == "-" else "<" + m.group(1) + ">", text)


def compose_spec_schema() -> dict:
    # The Compose Specification's JSON schema, vendored in the check-jsonschema wheel (no network).
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def test_compose_file_follows_the_compose_specification():
    schema = compose_spec_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors


def test_the_schema_check_catches_a_misspelt_key():
    broken = compose()
    broken["services"]["triton"]["shm_sise"] = "1gb"
    schema = compose_spec_schema()
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def _bind_mounts(service: dict) -> list[tuple[str, str, bool]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = resolve(volume).split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target, "ro" in mode))
    return mounts


def test_every_build_context_dockerfile_and_read_only_mount_exists():
    missing = []
    for name, service in compose()["services"].items():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for source, target, read_only in _bind_mounts(service):
            if read_only:  # inputs must exist; writable mounts (locust's results) are outputs
                path = Path(source) if source.startswith("/") else ROOT / source
                if not path.exists():
                    missing.append(f"{name}: {source} -> {target}")
    if missing and all("./load_tests" in m for m in missing):
        pytest.skip("load_tests/ comes with issue 4")
    assert not missing


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            sources += [part for part in line.split()[1:-1] if not part.startswith("--")]
    return sources


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_file_a_dockerfile_copies_exists(dockerfile: Path):
    sources = _copy_sources(dockerfile)
    assert sources
    for source in sources:
        if source == "load_tests" and not (ROOT / source).exists():
            pytest.skip("load_tests/ comes with issue 4")
        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"


def test_dockerignore_keeps_the_virtualenv_and_weights_out_of_build_contexts():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.pt", "*.onnx"} <= set(ignored)


def test_triton_service_reserves_one_gpu_and_mounts_the_repository_read_only():
    triton = compose()["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "model-repository:/models:ro" in triton["volumes"]
    assert triton["environment"]["MODEL_REPOSITORY"] == "/models"
    # Triton waits for the export to finish, and the export writes that same volume.
    assert triton["depends_on"]["model-builder"]["condition"] == "service_completed_successfully"
    assert "model-repository:/models" in compose()["services"]["model-builder"]["volumes"]


def test_triton_service_shm_fits_several_full_batches_of_the_largest_model():
    shm = compose()["services"]["triton"]["shm_size"]
    size = int(re.fullmatch(r"(\d+)gb", shm).group(1)) * 2**30
    largest_batch = 64 * 3 * 336 * 336 * 4  # max_batch_size x ViT-L/14@336px pixels, float32
    assert size >= 8 * largest_batch


def test_triton_service_ports_healthcheck_and_drain():
    triton = compose()["services"]["triton"]
    published = {resolve(p).rsplit(":", 2)[-1] for p in triton["ports"]}
    assert published == {"8000", "8001", "8002"}
    assert all(resolve(p).startswith("127.0.0.1:") for p in triton["ports"])  # loopback unless told otherwise
    assert triton["healthcheck"]["test"] == ["CMD", "python3", "/opt/clip-triton/healthcheck.py"]
    assert "/v2/health/ready" in (DEPLOY / "docker" / "triton" / "healthcheck.py").read_text()
    grace = int(triton["stop_grace_period"].rstrip("s"))
    assert grace > int(triton["environment"]["EXIT_TIMEOUT_SECS"])


def test_triton_service_cannot_start_without_an_admin_key():
    key = compose()["services"]["triton"]["environment"]["CLIP_TRITON_ADMIN_KEY"]
    assert re.fullmatch(r"\$\{CLIP_TRITON_ADMIN_KEY:\?.+\}", key), "compose must refuse to run without the key"


def test_triton_image_is_pinned_to_the_triton_the_tests_run():
    dockerfile = (DEPLOY / "docker" / "triton.Dockerfile").read_text()
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    pins = re.search(r'pip install --no-cache-dir "numpy==([\d.]+)" "pillow==([\d.]+)"', dockerfile)
    assert pins
    serve_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert "numpy>=1.24,<2" in serve_extra and pins.group(1).startswith("1.")  # the stub needs numpy 1


def test_images_are_pinned():
    for name, service in compose()["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def _locust_options() -> set[str]:
    result = subprocess.run([sys.executable, "-m", "locust", "--help"], capture_output=True, text=True, timeout=120)
    options = set()
    for line in result.stdout.splitlines():
        if line.lstrip().startswith("-"):  # an option's own line, e.g. "  -H <base url>, --host <base url>"
            options.update(re.findall(r"--[a-z][a-z-]*", line))
    return options


def test_load_test_is_bounded_and_uses_options_locust_knows():
    services = compose()["services"]
    master, worker = services["locust-master"], services["locust-worker"]
    assert "--headless" in master["command"] and any(a.startswith("--run-time=") for a in master["command"])
    assert "--host=triton:8001" in master["command"]
    assert "--master-host=locust-master" in worker["command"]
    assert master["depends_on"]["triton"]["condition"] == "service_healthy"
    known = _locust_options()
    for argument in master["command"] + worker["command"]:
        assert argument.split("=")[0] in known, argument
    assert master["profiles"] == worker["profiles"] == ["load"]  # `docker compose up` alone never loads


def test_load_test_runs_the_locustfile_with_settings_it_reads():
    locustfile = ROOT / "load_tests" / "locustfile.py"
    master = compose()["services"]["locust-master"]
    assert "--locustfile=/src/load_tests/locustfile.py" in master["command"]
    assert "./load_tests:/src/load_tests:ro" in master["volumes"]
    if not locustfile.exists():
        pytest.skip("load_tests/locustfile.py comes with issue 4")
    text = locustfile.read_text()
    for variable in master["environment"]:
        assert variable in text, f"the locustfile does not read {variable}"
