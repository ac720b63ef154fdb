"""`clip-triton encode`: image files and folders -> one .npz of features, resumable, failures recorded.

Results stream in request by request and the output file is rewritten atomically every
`--save-interval` seconds (and at the end, on Ctrl-C, or when the server gives up), so an
interrupted run over a huge folder loses at most the last interval; `--resume` then skips every
path already in the file. Paths are stored absolute, so a resume from another folder still matches.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from clip_triton import ClipClient, ClipError
from clip_triton.image_files import find_images

from .feature_file import FeatureFile

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--url", action="append", dest="urls", metavar="HOST:PORT",
                        help="gRPC server (repeat for several: requests spread and fail over); default 127.0.0.1:8001; "
                             "also a gRPC target such as dns:///NAME:PORT")
    parser.add_argument("--load-balancing", choices=("pick_first", "round_robin"),
                        help="gRPC balancing over every address a --url resolves to (round_robin for a headless Service)")
    parser.add_argument("--output", type=Path, default=Path("features.npz"), help="the .npz to write")
    parser.add_argument("--batch-size", type=int, help="images per request (default: the server's max_batch_size)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (default 4)")
    parser.add_argument("--normalize", action="store_true", help="store unit-length rows (for cosine similarity)")
    parser.add_argument("--resume", action="store_true", help="skip paths already encoded in --output")
    parser.add_argument("--save-interval", type=float, default=30.0, metavar="SECONDS",
                        help="rewrite --output at most this often while running (default 30)")
    parser.add_argument("--timeout", type=float, help="seconds one request may take")
    parser.add_argument("--retry-deadline", type=float, help="seconds to keep retrying an unavailable server")
    parser.add_argument("--tls-ca", type=Path, help="PEM root certificate of a TLS server (enables TLS)")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM client key (mutual TLS)")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="gRPC metadata sent with every request, e.g. an auth token (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--header needs KEY=VALUE, got {pair!r}")
        headers[key.strip().lower()] = value
    return headers


def run(args: argparse.Namespace) -> int:
    wanted = list(dict.fromkeys(os.path.abspath(p) for p in find_images(args.paths)))
    if not wanted:
        print(f"clip-triton encode: no image files under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return EXIT_ERROR
    store = FeatureFile(normalized=args.normalize)
    if args.resume and args.output.exists():
        store = FeatureFile.load(args.output)
        if store.normalized != args.normalize:
            raise ValueError(f"{args.output} holds {'normalized' if store.normalized else 'raw'} features; "
                             f"resume with{'' if store.normalized else 'out'} --normalize")
    done = set(store.paths)
    todo = [path for path in wanted if path not in done]

    client = ClipClient(args.urls or "127.0.0.1:8001", root_certificates=args.tls_ca, ssl=args.tls_ca is not None,
                        certificate_chain=args.tls_cert, private_key=args.tls_key, headers=_headers(args.header),
                        retry_deadline=args.retry_deadline, load_balancing=args.load_balancing)
    new_rows, new_failures, status = 0, {}, EXIT_OK
    with client:
        dim = client.embedding_dim if todo else 0
        last_save = time.monotonic()
        try:
            for part in client.iter_encode(todo, normalize=args.normalize, batch_size=args.batch_size,
                                           concurrency=args.concurrency, timeout=args.timeout,
                                           show_progress=not args.quiet):
                failures = {todo[f.index]: f.reason for f in part.failures}
                store.add([todo[i] for i in part.indices], part.features, failures)
                new_rows += len(part.indices)
                new_failures.update(failures)
                if time.monotonic() - last_save >= args.save_interval:
                    store.save(args.output, dim)
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            status = EXIT_INTERRUPTED
            print("\ninterrupted: saving what was encoded; run again with --resume to continue", file=sys.stderr)
        except ClipError as error:
            status = EXIT_ERROR
            print(f"clip-triton encode: {error}\nsaved what was encoded; run again with --resume to continue",
                  file=sys.stderr)
        store.save(args.output, dim)

    for path, reason in new_failures.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)
    skipped = len(wanted) - len(todo)
    print(f"encoded {new_rows} image(s), failed {len(new_failures)}, skipped {skipped} already in {args.output}; "
          f"{len(store.paths)} feature row(s) in {args.output}")
    if status == EXIT_OK and new_failures:
        status = EXIT_SOME_FAILED
    return status
