"""Locust load test: real encoded images to the `clip_image_encoder` ensemble over gRPC (tritonclient).

    locust -f load_tests/locustfile.py --headless --users 4 --spawn-rate 4 --run-time 20s \
        --host 127.0.0.1:8001 --csv out

Every request is reported through locust's request event: its response time, its payload size (the
encoded image bytes sent, shown in locust's "content size" column) and, when it fails, the server's
own message. Each user is a closed loop: it sends its next request as soon as the last one returns,
so `--users` is the number of requests in flight.

Options (command line, or the environment variable in brackets): --images DIR [LOCUST_IMAGES],
--images-per-request N [LOCUST_IMAGES_PER_REQUEST], --model NAME [LOCUST_MODEL], --grpc-tls [LOCUST_GRPC_TLS],
--grpc-tls-ca/-cert/-key FILE [LOCUST_GRPC_TLS_CA/_CERT/_KEY], --request-timeout S [LOCUST_REQUEST_TIMEOUT].
A host written `grpcs://host:port` also turns TLS on.
"""
from __future__ import annotations

# gRPC's blocking calls must yield to gevent (locust's concurrency), and this must happen before any
# channel exists; otherwise one user's request blocks every other user in the process.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402

from clip_triton import contract  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
_user_numbers = itertools.count()


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    group = parser.add_argument_group("clip-triton")
    group.add_argument("--images", default=str(DEFAULT_IMAGES), env_var="LOCUST_IMAGES",
                       help="folder of image files to send (all of them, in turn)")
    group.add_argument("--images-per-request", type=int, default=1, env_var="LOCUST_IMAGES_PER_REQUEST",
                       help="batch size of each request (IMAGE shape [N, 1])")
    group.add_argument("--model", default=contract.ENSEMBLE_MODEL, env_var="LOCUST_MODEL",
                       help="model to call (the ensemble by default)")
    # locust's own --tls-cert/--tls-key belong to its web UI, hence the grpc- prefix.
    group.add_argument("--grpc-tls", action="store_true", default=False, env_var="LOCUST_GRPC_TLS",
                       help="connect with TLS (server certificate checked against --grpc-tls-ca or system roots)")
    group.add_argument("--grpc-tls-ca", default="", env_var="LOCUST_GRPC_TLS_CA", help="PEM root certificates")
    group.add_argument("--grpc-tls-cert", default="", env_var="LOCUST_GRPC_TLS_CERT",
                       help="PEM client certificate (mutual TLS)")
    group.add_argument("--grpc-tls-key", default="", env_var="LOCUST_GRPC_TLS_KEY", help="PEM client key (mutual TLS)")
    group.add_argument("--request-timeout", type=float, default=120.0, env_var="LOCUST_REQUEST_TIMEOUT",
                       help="seconds before a request counts as failed")


class RequestFailed(Exception):
    """A failed request, carrying the server's message: locust records `repr(exception)`, and
    tritonclient's exception keeps its message out of its repr."""


class _ClosesOnce(grpcclient.InferenceServerClient):
    """tritonclient closes its channel again in `__del__`; under gevent, that second close, run at
    interpreter exit, can hang the locust process. Closing exactly once (in on_stop) avoids it."""

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


def read_images(folder: Path) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of every image file in `folder`, sorted; read once, sent many times."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files in {folder}")
    return [(p.name, p.read_bytes()) for p in files]


def parse_target(host: str | None, tls: bool) -> tuple[str, bool]:
    """`--host` as tritonclient wants it (HOST:PORT), and whether to use TLS."""
    if not host:
        raise ValueError("give the server's gRPC address with --host HOST:PORT")
    for scheme, scheme_tls in (("grpcs://", True), ("grpc://", False)):
        if host.startswith(scheme):
            return host[len(scheme):].rstrip("/"), tls or scheme_tls
    return host.rstrip("/"), tls


class ClipGrpcUser(User):
    """One closed-loop client of the ensemble: encoded images in, embeddings out."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = options.model
        self.per_request = max(1, int(options.images_per_request))
        self.timeout = float(options.request_timeout)
        self.images = read_images(Path(options.images))
        url, tls = parse_target(self.host, options.grpc_tls)
        self.client = _ClosesOnce(  # tritonclient reads the PEM files itself
            url, ssl=tls, root_certificates=options.grpc_tls_ca or None,
            private_key=options.grpc_tls_key or None, certificate_chain=options.grpc_tls_cert or None,
        )
        # Users start at different images, so concurrent requests carry different payloads.
        self.position = next(_user_numbers) % len(self.images)

    def on_stop(self) -> None:
        self.client.close()

    def next_batch(self) -> list[bytes]:
        batch = []
        for _ in range(self.per_request):
            batch.append(self.images[self.position][1])
            self.position = (self.position + 1) % len(self.images)
        return batch

    @task
    def encode(self) -> None:
        batch = self.next_batch()
        image = grpcclient.InferInput(contract.IMAGE_INPUT, [len(batch), 1], "BYTES")
        image.set_data_from_numpy(np.array(batch, dtype=np.object_).reshape(len(batch), 1))
        wanted = [grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)]
        payload = sum(len(b) for b in batch)
        error: Exception | None = None
        start = time.perf_counter()
        try:
            result = self.client.infer(self.model, [image], outputs=wanted, client_timeout=self.timeout)
            embedding = result.as_numpy(contract.EMBEDDING_OUTPUT)
            if embedding is None or embedding.shape[0] != len(batch):
                got = None if embedding is None else embedding.shape
                error = RequestFailed(f"expected {len(batch)} embeddings, got {got}")
        except Exception as raised:  # noqa: BLE001 - every failure is reported to locust, never raised
            error = RequestFailed(str(raised) or type(raised).__name__)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.environment.events.request.fire(
            request_type="grpc", name=f"{self.model} [{len(batch)} image(s)]", response_time=elapsed_ms,
            response_length=payload, exception=error, context={"images": len(batch)},
        )
