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
A host written `grpcs://host:port` also turns TLS on. For the soak and overload tools:
--bad-image-every N [LOCUST_BAD_IMAGE_EVERY] makes every Nth request of each user a known-bad image, which
must be refused with INVALID_ARGUMENT (a success named "bad image refused (expected)"; accepted, it is a
failure); --name-by-outcome [LOCUST_NAME_BY_OUTCOME] names requests "<phase>: accepted" or
"<phase>: rejected (STATUS)" (the phase of load_tests/shapes.py, if it runs), so locust's statistics
separate accepted from rejected requests per phase.

The images are read with measure.images (run locust from the checkout's root, as the Makefile does).
"""
from __future__ import annotations

# gRPC's blocking calls must yield to gevent (locust's concurrency), and this must happen before any
# channel exists; otherwise one user's request blocks every other user in the process.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from clip_triton import contract  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # locust adds the working directory; this also finds measure/ from elsewhere
    sys.path.append(str(ROOT))
from load_tests.request_names import BAD_IMAGE_REFUSED, accepted, rejected  # noqa: E402
from measure.images import load_folder  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared" / "images"
BAD_IMAGE = b"this is not an image"
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
    group.add_argument("--bad-image-every", type=int, default=0, env_var="LOCUST_BAD_IMAGE_EVERY",
                       help="every Nth request of each user sends a known-bad image that must be refused (0: never)")
    group.add_argument("--name-by-outcome", action="store_true", default=False, env_var="LOCUST_NAME_BY_OUTCOME",
                       help='name requests "<phase>: accepted" or "<phase>: rejected (STATUS)"')


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


def status_of(error: Exception) -> str:
    """The gRPC status name of a refusal (e.g. UNAVAILABLE), or the exception's type for anything else."""
    if isinstance(error, InferenceServerException) and error.status():
        return str(error.status()).replace("StatusCode.", "")
    return type(error).__name__


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
        self.bad_every = max(0, int(options.bad_image_every))
        self.by_outcome = bool(options.name_by_outcome)
        self.images = load_folder(Path(options.images))
        url, tls = parse_target(self.host, options.grpc_tls)
        self.client = _ClosesOnce(  # tritonclient reads the PEM files itself
            url, ssl=tls, root_certificates=options.grpc_tls_ca or None,
            private_key=options.grpc_tls_key or None, certificate_chain=options.grpc_tls_cert or None,
        )
        # Users start at different images, so concurrent requests carry different payloads.
        self.position = next(_user_numbers) % len(self.images)
        self.sent = 0

    def on_stop(self) -> None:
        self.client.close()

    def next_batch(self) -> list[bytes]:
        batch = []
        for _ in range(self.per_request):
            batch.append(self.images[self.position][1])
            self.position = (self.position + 1) % len(self.images)
        return batch

    def send(self, batch: list[bytes]) -> tuple[float, Exception | None]:
        """One request: (milliseconds, the exception it raised or None when it returned one row per image)."""
        image = contract.image_input(batch)  # built before the clock starts: the server's time is measured
        wanted = [grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT)]
        error: Exception | None = None
        start = time.perf_counter()
        try:
            result = self.client.infer(self.model, [image], outputs=wanted, client_timeout=self.timeout)
            embedding = result.as_numpy(contract.EMBEDDING_OUTPUT)
            if embedding is None or embedding.shape[0] != len(batch):
                got = None if embedding is None else embedding.shape
                error = RequestFailed(f"expected {len(batch)} embeddings, got {got}")
        except Exception as raised:  # noqa: BLE001 - every failure is reported to locust, never raised
            error = raised
        return (time.perf_counter() - start) * 1000.0, error

    def label(self, images: int) -> str:
        """What the request is called: the model and batch size, or with --name-by-outcome the current phase."""
        default = f"{self.model} [{images} image(s)]"
        if not self.by_outcome:
            return default
        return getattr(self.environment.shape_class, "phase", None) or default

    @task
    def encode(self) -> None:
        self.sent += 1
        if self.bad_every and self.sent % self.bad_every == 0:
            self.send_bad_image()
            return
        batch = self.next_batch()
        name = self.label(len(batch))  # the phase in which the request was sent
        elapsed_ms, error = self.send(batch)
        if self.by_outcome:
            refused = error is not None and not isinstance(error, RequestFailed)
            name = rejected(name, status_of(error)) if refused else accepted(name)
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=elapsed_ms, response_length=sum(len(b) for b in batch),
            exception=_reported(error), context={"images": len(batch)},
        )

    def send_bad_image(self) -> None:
        """The error path under load: a known-bad image must be refused with INVALID_ARGUMENT, nothing else."""
        elapsed_ms, error = self.send([BAD_IMAGE])
        if error is None:
            failure: Exception | None = RequestFailed("a bad image was accepted")
        elif status_of(error) == "INVALID_ARGUMENT":
            failure = None
        else:
            failure = _reported(error)
        self.environment.events.request.fire(
            request_type="grpc", name=BAD_IMAGE_REFUSED, response_time=elapsed_ms, response_length=len(BAD_IMAGE),
            exception=failure, context={"images": 1},
        )


def _reported(error: Exception | None) -> Exception | None:
    """What locust records: the server's message, which tritonclient's exception keeps out of its repr."""
    if error is None or isinstance(error, RequestFailed):
        return error
    return RequestFailed(str(error) or type(error).__name__)
