"""Load tests against a real server: locust's reports show the traffic, failures carry the server's
message, and the SLO check fails when the objective is broken."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clip_triton import contract
from clip_triton_serve import free_port
from conftest import GOLDEN, IMAGES, ROOT, running_server
from load_tests import slo
from load_tests.request_names import BAD_IMAGE_REFUSED
from measure import locust_output

LOCUSTFILE = ROOT / "load_tests" / "locustfile.py"


def run_locust(url: str, prefix: Path, *extra: str, users: int = 2, run_time: str = "4s") -> int:
    """The issue's command line, short: headless, bounded, CSV out. Returns locust's exit code."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users),
               "--spawn-rate", str(users), "--run-time", run_time, "--host", url, "--csv", str(prefix), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=120).returncode


def aggregated_row(prefix: Path) -> dict[str, str]:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")


@pytest.mark.server
def test_locust_run_reports_requests_without_failures(vit_server, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    assert run_locust(vit_server.grpc_url, prefix, "--images-per-request", "2") == 0
    row = aggregated_row(prefix)
    assert int(row["Request Count"]) > 0
    assert int(row["Failure Count"]) == 0
    assert float(row["Average Content Size"]) > 0  # the encoded image bytes sent
    with open(f"{prefix}_stats.csv", newline="") as handle:
        names = [r["Name"] for r in csv.DictReader(handle)]
    assert any("[2 image(s)]" in name for name in names), names
    assert slo.main([str(prefix), "--p99-ms", "600000"]) == 0
    assert slo.main([str(prefix), "--p99-ms", "0"]) == 1  # a broken p99 bound fails the check


@pytest.mark.server
def test_failures_carry_the_servers_message(vit_server, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.jpg").write_bytes((IMAGES / "rocket.jpg").read_bytes())
    (images / "broken.jpg").write_bytes(b"this is not an image")
    prefix = tmp_path / "run"
    assert run_locust(vit_server.grpc_url, prefix, "--images", str(images), run_time="3s") == 1  # locust: failures
    row = aggregated_row(prefix)
    assert 0 < int(row["Failure Count"]) < int(row["Request Count"])
    with open(f"{prefix}_failures.csv", newline="") as handle:
        errors = [r["Error"] for r in csv.DictReader(handle)]
    assert any("INVALID_ARGUMENT" in e and "not a recognised image format" in e for e in errors), errors
    assert slo.main([str(prefix), "--p99-ms", "600000"]) == 1


@pytest.mark.server
def test_make_loadtest_serves_runs_and_enforces_the_slo(tmp_path: Path) -> None:
    """The `make loadtest` driver on its own server: reports written, a p99 bound of 0 ms breaks the SLO."""
    out = tmp_path / "loadtest"
    completed = subprocess.run(
        [sys.executable, "-m", "load_tests.run", "--checkpoint", str(GOLDEN / "tiny-vit-b32.pt"), "--out", str(out),
         "--users", "2", "--run-time", "3s", "--p99-ms", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "SLO BROKEN: p99 latency" in completed.stderr
    row = aggregated_row(out / "locust")
    assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
    assert (out / "locust.html").stat().st_size > 0
    assert slo.main([str(out / "locust"), "--p99-ms", "600000"]) == 0


def test_make_loadtest_refuses_remote_targets(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "load_tests.run", "--url", "10.0.0.1:8001", "--out",
                                str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert "only sends traffic to 127.0.0.1" in completed.stderr
    assert not list(tmp_path.glob("locust*"))


def test_slo_reads_the_csv_and_judges_it(tmp_path: Path) -> None:
    header = ["Type", "Name", "Request Count", "Failure Count", "99%"]
    rows = [["grpc", "clip_image_encoder [1 image(s)]", "10", "1", "250"], ["", "Aggregated", "10", "1", "250"]]
    with open(tmp_path / "run_stats.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    summary = slo.read_summary(tmp_path / "run")
    assert (summary.requests, summary.failures, summary.p99_ms) == (10, 1, 250.0)
    assert slo.violations(summary, max_failures=1, p99_ms=250) == []
    assert len(slo.violations(summary, max_failures=0, p99_ms=100)) == 2
    assert slo.violations(slo.LoadSummary(0, 0, 0.0, tmp_path), 0, 1000) == ["no requests were made"]


def test_histogram_percentile_is_the_smallest_time_covering_the_fraction() -> None:
    times = {10: 98, 20: 1, 500: 1}
    assert locust_output.histogram_percentile(times, 0.98) == 10
    assert locust_output.histogram_percentile(times, 0.99) == 20
    assert locust_output.histogram_percentile(times, 1.0) == 500
    assert locust_output.histogram_percentile({}, 0.99) == 0.0


@pytest.mark.server
def test_bad_images_are_refused_as_expected_and_names_say_the_outcome(vit_server, tmp_path: Path) -> None:
    """The soak's and the overload report's options: every third request of a user a known-bad image, refused
    with INVALID_ARGUMENT (a success under its own name); other requests named by outcome."""
    prefix = tmp_path / "run"
    assert run_locust(vit_server.grpc_url, prefix, "--bad-image-every", "3", "--name-by-outcome", "--json-file",
                      str(prefix), run_time="3s") == 0
    entries = {entry["name"]: entry for entry in locust_output.stats(prefix)}
    assert set(entries) == {BAD_IMAGE_REFUSED, f"{contract.ENSEMBLE_MODEL} [1 image(s)]: accepted"}, set(entries)
    assert entries[BAD_IMAGE_REFUSED]["num_requests"] > 0
    assert sum(entry["num_failures"] for entry in entries.values()) == 0


@pytest.mark.server
def test_distributed_master_and_worker_share_the_locustfile(vit_server, tmp_path: Path) -> None:
    """The README's distributed command: options given to the master reach the worker."""
    port = free_port()
    prefix = tmp_path / "dist"
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    worker = subprocess.Popen([*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        master = subprocess.run(
            [*base, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--headless",
             "--expect-workers", "1", "--expect-workers-max-wait", "60", "--users", "2", "--spawn-rate", "2",
             "--run-time", "3s", "--host", vit_server.grpc_url, "--csv", str(prefix), "--json-file", str(prefix),
             "--images-per-request", "3"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert master.returncode == 0, master.stderr[-2000:]
        worker.wait(30)  # the master tells its worker to quit at the end
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    summary = slo.read_summary(prefix)
    assert summary.requests > 0 and summary.failures == 0
    entries = json.loads(Path(f"{prefix}.json").read_text())
    assert [e["name"] for e in entries] == [f"{contract.ENSEMBLE_MODEL} [3 image(s)]"]


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway certificate for `host` (as an IP SAN) and its key, PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.server
def test_locust_speaks_tls_to_a_tls_server(vit_repository, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    tls = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    with running_server(vit_repository, extra_args=tls) as server:
        assert run_locust(f"grpcs://{server.grpc_url}", tmp_path / "tls", "--grpc-tls-ca", str(cert),
                          run_time="3s") == 0
        row = aggregated_row(tmp_path / "tls")
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
        # The same server in plaintext, or over TLS without trusting its certificate: every request fails.
        for name, extra in (("plain", ()), ("untrusted", ("--grpc-tls",))):
            # 4 s, not 2: on a loaded 2-core machine a 2-second run once ended before its first failed request.
            assert run_locust(server.grpc_url, tmp_path / name, *extra, run_time="4s") == 1
            row = aggregated_row(tmp_path / name)
            assert int(row["Failure Count"]) == int(row["Request Count"]) > 0
