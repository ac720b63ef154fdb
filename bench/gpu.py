"""`make bench-gpu`: the GPU target measured beside OpenAI's own way, on one GPU host, in one run.

    python -m bench.gpu [--seconds 4] [--report-dir bench/report/gpu] [--repository DIR]

Measures OpenAI's way (fp16 on CUDA, its PIL/torchvision transform, batch 1 and 64), the fp16 model alone
(batch 256 and 1024), nvJPEG decoding alone and the whole GPU transform alone, then the server end to end
over gRPC (encoded JPEGs in, features out) on small photos, 12 MP phone JPEGs and small JPEGs of 1,024
different sizes (as web traffic comes; the GPU resize's cost depends on how many sizes a batch holds, so it is
measured both ways: mixed sizes together, and size by size), with Triton's per-model breakdown and a feature
check against eager fp32. Writes results.json, report.md and PNG plots. Every stage
runs even if an earlier one failed (its error is recorded), and results.json is rewritten after each, so a
cut-short run still leaves what it measured. Without a CUDA GPU it says so and exits 0.

`--rehearse-on-cpu` runs every stage on this machine's CPU instead (torch's CPU device, the repository's
instances switched to KIND_CPU, small batches and a smaller many-sizes set), into bench_out/gpu-rehearsal:
a GPU host's time is short, so the benchmark's own code is checked before it gets there. Its figures are not
GPU figures, and its report says so.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "images"
# "CxN[:P]": C requests in flight, N images each, spread over P load-generator processes.
SMALL_LEVELS = "1x1,64x1:4,16x64:4,32x64:8,64x64:8"
PHONE_LEVELS = "1x1,8x16:4,16x16:8,32x16:8"
# Other settings measured beside the defaults, each at the levels that tell it apart: what the defaults are
# chosen against (throughput for the instance counts, concurrency 1 and many single images for the graphs).
HIGH_LEVELS = {"small": "32x64:8", "phone": "16x16:8"}
VARIED_LEVELS = HIGH_LEVELS["small"]
VARIANTS = {  # --variants name: (overrides of the GPU target's defaults, levels)
    "preprocess-1": ({"preprocess_instances": 1}, HIGH_LEVELS),
    "preprocess-3": ({"preprocess_instances": 3}, HIGH_LEVELS),
    "preprocess-4": ({"preprocess_instances": 4}, HIGH_LEVELS),
    "preprocess-6": ({"preprocess_instances": 6}, HIGH_LEVELS),
    "no-cuda-graphs": ({"cuda_graph_batch_sizes": ()}, {"small": "1x1,64x1:4", "phone": "1x1"}),
    "per-size-resize": ({"mixed_resize_max_pixels": 0}, {"small": HIGH_LEVELS["small"], "varied": VARIED_LEVELS}),
    # the queue delays first chosen: do they batch better at mid load (64 single images) than none?
    "queue-delay-500": ({"preprocess_queue_delay_us": 500, "visual_queue_delay_us": 500},
                        {"small": "1x1,64x1:4," + HIGH_LEVELS["small"]}),
}
CHECKED_VARIED_IMAGES = 128  # the feature check's share of the 1,024 (the exact transform runs on the CPU)
# In process: decoding batches and the model alone's batches on a GPU, and when rehearsing on the CPU (where a
# 64-image batch of 12 MP photos takes minutes). The rehearsal's many-sizes set is smaller too.
BATCHES = {"small": 256, "varied": 256, "phone": 64}
MODEL_BATCHES = (256, 1024)
REHEARSAL_BATCHES, REHEARSAL_MODEL_BATCHES = {"small": 8, "varied": 8, "phone": 2}, (8, 16)
REHEARSAL_VARIED_COUNT = 64
REHEARSAL_DIR = ROOT / "bench_out" / "gpu-rehearsal"
# What a GPU run and a rehearsal take where the command line says nothing: a rehearsal's levels are a few
# requests (a 32 x 64-image level takes minutes on a small CPU), and it spawns two decoding processes. Its
# windows last 1.5 s all the same: clip_preprocess publishes its metrics every 0.5 s, and a level's stage
# window shorter than that can read the same totals at both ends (no images at all).
# A rehearsal keeps its own folders: it never writes over the GPU report.
DEFAULTS = {"seconds": 4.0, "warmup": 2.0, "small_levels": SMALL_LEVELS, "phone_levels": PHONE_LEVELS,
            "varied_levels": VARIED_LEVELS, "nvjpeg_processes": "2,4,8",
            "work_dir": ROOT / "bench_out" / "gpu", "report_dir": ROOT / "bench" / "report" / "gpu"}
REHEARSAL_DEFAULTS = {"seconds": 1.5, "warmup": 0.2, "small_levels": "1x1,4x2:2", "phone_levels": "1x1",
                      "varied_levels": "2x4", "nvjpeg_processes": "2",
                      "work_dir": REHEARSAL_DIR / "work", "report_dir": REHEARSAL_DIR / "report"}


def say(message: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_levels(text: str):
    from measure.loadgen import Level

    levels = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        shape, _, processes = item.partition(":")
        concurrency, _, per_request = shape.partition("x")
        levels.append(Level(int(concurrency), int(per_request or 1), int(processes or 1)))
    return levels


def _defaults(name: str) -> str:
    """--help's note of an option's two defaults, read from the dictionaries parse_args applies."""
    def shown(value: object) -> object:
        return value.relative_to(ROOT) if isinstance(value, Path) else value

    return f"{shown(DEFAULTS[name])}; rehearsing: {shown(REHEARSAL_DEFAULTS[name])}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="OpenAI checkpoint (default: seeded random --random-init)")
    source.add_argument("--random-init", default="ViT-B/32")
    parser.add_argument("--repository", type=Path, help="serve this exported GPU repository instead of exporting one")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of small photos")
    parser.add_argument("--seconds", type=float, help=f"measurement time per point ({_defaults('seconds')})")
    parser.add_argument("--warmup", type=float, help=f"warm-up seconds per server level ({_defaults('warmup')})")
    parser.add_argument("--small-levels", help=f"server levels, small JPEGs ({_defaults('small_levels')})")
    parser.add_argument("--phone-levels", help=f"server levels, 12 MP JPEGs ({_defaults('phone_levels')})")
    parser.add_argument("--varied-levels",
                        help=f"server levels, small JPEGs of many sizes ({_defaults('varied_levels')})")
    parser.add_argument("--no-variants", action="store_true", help="measure the defaults only")
    parser.add_argument("--variants-only", action="store_true",
                        help="only the variants, added to the results.json of an earlier run in --report-dir "
                             "(same --work-dir): the defaults' figures one run, the variants another")
    parser.add_argument("--nvjpeg-processes",
                        help="nvJPEG alone in this many processes at once, comma list "
                             f"({_defaults('nvjpeg_processes')}; empty: none)")
    parser.add_argument("--no-libjpeg", action="store_true", help="skip libjpeg decoding alone")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma list of the settings to compare with the defaults ({', '.join(VARIANTS)})")
    parser.add_argument("--fidelity", type=Path, help="JSON written by `make test-gpu` (CLIP_TRITON_GPU_FIDELITY)")
    parser.add_argument("--rehearse-on-cpu", action="store_true",
                        help="run every stage on the CPU, small, to check this code before GPU time is spent "
                             f"(default dirs under {REHEARSAL_DIR.relative_to(ROOT)}; not GPU figures)")
    parser.add_argument("--work-dir", type=Path, help=f"exports, workloads and logs ({_defaults('work_dir')})")
    parser.add_argument("--report-dir", type=Path, help=f"results.json, report.md, plot ({_defaults('report_dir')})")
    args = parser.parse_args(argv)
    for name, value in (REHEARSAL_DEFAULTS if args.rehearse_on_cpu else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.rehearse_on_cpu and args.repository:  # the rehearsal rewrites the repository it serves to KIND_CPU
        parser.error("--rehearse-on-cpu exports its own repository: leave out --repository")
    args.variants = [part.strip() for part in args.variants.split(",") if part.strip()]
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:  # before any GPU time is spent
        parser.error(f"unknown --variants {', '.join(map(repr, unknown))}; choose from: {', '.join(VARIANTS)}")
    if len(set(args.variants)) < len(args.variants):
        parser.error(f"--variants names a setting twice: {', '.join(args.variants)}")
    if args.variants_only and (args.no_variants or not args.variants):
        parser.error("--variants-only needs variants to measure")
    args.nvjpeg_processes = [int(part) for part in args.nvjpeg_processes.split(",") if part.strip()]
    return args


class Run:
    """The results dictionary, saved after every stage; a failed stage records its error and the run goes on."""

    def __init__(self, report_dir: Path, results: dict | None = None):
        self.report_dir = report_dir
        self.results: dict = results or {"schema": 1, "errors": {}}
        self.results.setdefault("stage_seconds", {})
        report_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def resumed(cls, report_dir: Path) -> "Run":
        """The run whose results.json is in `report_dir`, to add stages to."""
        saved = report_dir / "results.json"
        if not saved.is_file():
            raise SystemExit(f"--variants-only: no {saved} from an earlier run to add the variants to")
        return cls(report_dir, json.loads(saved.read_text()))

    def stage(self, name: str, measure: Callable[[], object]):
        say(f"{name} ...")
        started = time.monotonic()
        try:
            value = measure()
        except Exception as error:  # noqa: BLE001 - recorded, and the other stages still run
            self.failed(name, error)
            value = None
            self.results.pop(name, None)  # a resumed run's earlier figures are not this stage's
        else:
            self.results[name] = value
            self.results["errors"].pop(name, None)
            say(f"{name} done in {time.monotonic() - started:.1f} s")
        self.results["stage_seconds"][name] = round(time.monotonic() - started, 1)
        self.save()
        return value

    def failed(self, name: str, error: Exception) -> None:
        """Record `name`'s error in the results and print it with its traceback (call it from `except`)."""
        self.results["errors"][name] = f"{type(error).__name__}: {error}"
        say(f"{name} FAILED: {error}\n{traceback.format_exc()}")

    def save(self) -> None:
        (self.report_dir / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")


def shipped_module(folder: Path, name: str) -> ModuleType:
    """Import a module shipped beside a model (and its shipped siblings) the way the Python backend does."""
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None and args.rehearse_on_cpu:
        raise SystemExit("--rehearse-on-cpu runs the GPU code with torch on the CPU: install torch (make install)")
    if not args.rehearse_on_cpu and (torch is None or not torch.cuda.is_available()):
        print("make bench-gpu: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a host with an NVIDIA GPU, or check this code here with --rehearse-on-cpu.")
        return 0
    from clip_triton import contract
    from clip_triton.transform import preprocess
    from clip_triton_export.pipeline import export_repository, load_source
    from clip_triton_export.repository import on_cpu_instances
    from clip_triton_serve import local_server, procfs
    from measure import images as workloads, loadgen, machine

    from . import gpu_inprocess, gpu_report

    run = Run.resumed(args.report_dir) if args.variants_only else Run(args.report_dir)
    rehearsal = args.rehearse_on_cpu
    if args.variants_only and bool(run.results.get("rehearsal")) != rehearsal:  # CPU and GPU figures never mix
        raise SystemExit(f"--variants-only: {args.report_dir / 'results.json'} holds "
                         f"{'a CPU rehearsal' if run.results.get('rehearsal') else 'a GPU run'}'s figures, and this "
                         f"run {'rehearses on the CPU' if rehearsal else 'measures the GPU'}")
    if rehearsal:
        run.results["rehearsal"] = True
    device = "cpu" if rehearsal else "cuda:0"  # torch's device name, as every helper and .to() take it
    batches = REHEARSAL_BATCHES if rehearsal else BATCHES

    def as_served(repository: Path) -> Path:
        """The repository as this run serves it: on the GPU, or its instances on the CPU when rehearsing."""
        return on_cpu_instances(repository) if rehearsal else repository

    run.results["machine" if not args.variants_only else "variants_machine"] = machine.describe()
    run.results["settings" if not args.variants_only else "variants_settings"] = {
        key: str(value) for key, value in vars(args).items()}
    say(machine.one_line(run.results["machine"]))
    work = args.work_dir
    small = workloads.small_jpegs(args.images, work / "small-jpegs")
    phone = workloads.phone_photos(args.images, work / "phone-photos")
    varied = workloads.varied_jpegs(args.images, work / "varied-jpegs",
                                    count=REHEARSAL_VARIED_COUNT if rehearsal else workloads.VARIED_COUNT)
    sets = {"small": small.blobs(), "phone": phone.blobs(), "varied": varied.blobs()}
    run.results["workloads"] = {"small": small.summary(), "phone": phone.summary(), "varied": varied.summary()}
    loaded = load_source(args.checkpoint, None if args.checkpoint else args.random_init)
    size = loaded.spec.image_resolution
    run.results["model"] = {"source": loaded.source, "architecture": str(loaded.spec),
                            "random_weights": loaded.random_weights}

    def openai() -> dict:
        model = gpu_inprocess.openai_model(loaded.model, device)
        measured = {}
        for name, images in sets.items():
            if name == "varied":
                continue  # OpenAI's way does not care how many sizes there are
            for batch in (1, 64):
                # a 64-image batch of 12 MP photos takes OpenAI's way ~15 s: one timed batch, after a
                # one-image warm-up, is enough
                slow = name == "phone" and batch > 1
                if slow:
                    gpu_inprocess.openai_way(model, images[:1], size, 1, 0, min_steps=1, warmup_steps=0,
                                             device=device)
                measured[f"{name}_b{batch}"] = gpu_inprocess.openai_way(
                    model, images, size, batch, 0 if slow else args.seconds, min_steps=1 if slow else 2,
                    warmup_steps=0 if slow else 1, device=device)
                say(f"  OpenAI's way, {name}, batch {batch}: {measured[f'{name}_b{batch}']['images_per_s']:.1f} images/s")
        del model
        torch.cuda.empty_cache()
        return measured

    def export() -> dict:
        repository = args.repository or work / "repository"
        if args.repository is None:
            say(export_repository(repository, checkpoint=args.checkpoint,
                                  random_init=None if args.checkpoint else args.random_init, target="gpu"))
        return {"path": str(repository)}

    def decoding() -> dict:
        folder = repository / contract.PREPROCESS_MODEL / "1"
        gpu_transform = shipped_module(folder, "clip_gpu_transform")
        on = torch.device(device)  # the transform reads its .type (nvJPEG on cuda): a torch.device, not a name
        preprocessor = gpu_transform.BatchPreprocessor(size, on, torch.float16)
        per_size = gpu_transform.BatchPreprocessor(size, on, torch.float16, mixed_resize_max_pixels=0)
        measured = {}
        forget_weights = sys.modules["clip_pillow_resize"].forget_weights  # one cache per process, shared
        for name, images in sets.items():
            batch = batches[name]
            measured[f"nvjpeg_{name}"] = gpu_inprocess.nvjpeg_alone(images, batch, args.seconds, device)
            forget_weights()  # each measurement starts as a fresh server would (its warm-up fills it)
            measured[f"transform_{name}"] = gpu_inprocess.gpu_transform_alone(preprocessor, images, batch, args.seconds)
            say(f"  {name}: nvJPEG alone {measured[f'nvjpeg_{name}']['images_per_s']:.0f} images/s, whole GPU "
                f"transform {measured[f'transform_{name}']['images_per_s']:.0f} images/s (batch {batch})")
            if name != "phone":  # 12 MP photos take the per-size resize either way
                forget_weights()
                measured[f"transform_{name}_per_size"] = gpu_inprocess.gpu_transform_alone(per_size, images, batch,
                                                                                           args.seconds)
                say(f"  {name}: whole GPU transform, every size resized on its own: "
                    f"{measured[f'transform_{name}_per_size']['images_per_s']:.0f} images/s")
        preprocessor.close()
        per_size.close()
        for name, images in sets.items():
            if name == "varied":
                continue  # decoding costs the same whatever the sizes: measured on the other two
            batch = batches[name]
            for processes in args.nvjpeg_processes:  # torchvision holds one nvJPEG decoder per process
                scaled = gpu_inprocess.nvjpeg_in_processes(images, batch, processes, args.seconds, device)
                measured[f"nvjpeg_{name}_{processes}_processes"] = scaled
                say(f"  {name}: nvJPEG in {processes} processes at once: {scaled['images_per_s']:.0f} images/s")
            if not args.no_libjpeg:
                threads = machine.describe(with_gpu=False)["usable_cpus"]
                measured[f"libjpeg_{name}"] = gpu_inprocess.libjpeg_alone(images, threads, args.seconds)
                say(f"  {name}: libjpeg on {threads} CPU threads: "
                    f"{measured[f'libjpeg_{name}']['images_per_s']:.0f} images/s")
        return measured

    def serve_and_measure(served_repository: Path, levels: dict[str, str], check: bool) -> dict:
        measured: dict = {"sweeps": {}, "check": {}}
        log = (work / "tritonserver.log").resolve()
        log.unlink(missing_ok=True)
        with local_server(served_repository.resolve(), ready_timeout_s=600, log_path=log) as served:
            say(f"server ready on {served.grpc_url} (pid {served.pid}); log {log}")
            measured["command"] = served.options.command(Path("tritonserver"), Path("backends"))
            if check:
                reference = loaded.model.float().eval().to(device)
                for name, images in sets.items():
                    images = images[:CHECKED_VARIED_IMAGES] if name == "varied" else images
                    features = loadgen.encode_all(served.grpc_url, images)
                    with torch.no_grad():
                        exact = reference(torch.from_numpy(np.stack([preprocess(data, size) for data in images]))
                                          .to(device)).cpu().numpy()
                    measured["check"][name] = float(cosine(features, exact).min())
                    say(f"  features vs eager fp32 on the exact transform, {name}: min cosine "
                        f"{measured['check'][name]:.6f}")
            for name, text in levels.items():
                loadgen.encode_all(served.grpc_url, sets[name])  # every image seen once before timing
                measured["sweeps"][name] = loadgen.sweep(served.grpc_url, sets[name], parse_levels(text),
                                                         args.warmup, args.seconds, progress=say,
                                                         metrics_url=served.metrics_url)
            held = machine.gpu_memory_by_process()  # after the sweeps: every allocator at its largest
            processes = {served.pid: "tritonserver", **procfs.backend_stubs(served.pid)}
            measured["gpu_memory_mib"] = {name: held[pid] for pid, name in processes.items() if pid in held}
            say(f"  GPU memory held (MiB, nvidia-smi): {measured['gpu_memory_mib'] or 'not visible'}")
        return measured

    run_levels = {"small": args.small_levels, "phone": args.phone_levels, "varied": args.varied_levels}

    def server() -> dict:
        return serve_and_measure(as_served(repository), run_levels, check=True)

    def variants() -> dict:
        from clip_triton_export.repository import RepositoryOptions

        # A later --variants-only call adds to the variants an earlier one measured (a GPU host's calls are
        # short); each variant fails alone, so one that cannot start loses none of the others' figures.
        measured = dict(run.results.get("variants") or {}) if args.variants_only else {}
        for name in args.variants:
            overrides, levels = VARIANTS[name]
            if rehearsal:  # the workloads that tell the variant apart, at this run's (small) levels
                levels = {workload: run_levels[workload] for workload in levels}
            folder = work / "variants" / name
            say(f"variant: {name}")
            try:
                export_repository(folder, RepositoryOptions(target="gpu", **overrides), configs_only=True,
                                  checkpoint=args.checkpoint,
                                  random_init=None if args.checkpoint else args.random_init)
                (folder / artifact.relative_to(repository)).unlink(missing_ok=True)
                (folder / artifact.relative_to(repository)).hardlink_to(artifact)
                measured[name] = {"options": overrides, **serve_and_measure(as_served(folder), levels, check=False)}
                run.results["errors"].pop(f"variant {name}", None)
            except Exception as error:  # noqa: BLE001 - recorded, and the other variants still run
                measured.pop(name, None)
                run.failed(f"variant {name}", error)
            run.results["variants"] = measured
            run.save()
        return measured

    def exported_model(exported: dict | None) -> tuple[Path | None, Path | None]:
        repository = Path(exported["path"]) if exported else None
        return repository, repository / contract.VISUAL_MODEL / "1" / "model.pt" if repository else None

    if args.variants_only:  # the defaults were measured by an earlier run, whose export the variants reuse
        repository, artifact = exported_model(run.results.get("repository"))
        if artifact is None or not artifact.is_file():
            raise SystemExit(f"--variants-only: the earlier run left no exported model ({artifact or 'no repository'}); "
                             "run the defaults first on this machine (same --work-dir)")
    else:
        run.stage("openai_way", openai)
        repository, artifact = exported_model(run.stage("repository", export))
        run.stage("model_alone", lambda: gpu_inprocess.model_alone(
            artifact, size, REHEARSAL_MODEL_BATCHES if rehearsal else MODEL_BATCHES, args.seconds, device))
        run.stage("decoding_alone", decoding)
        run.stage("server", server)
    if not args.no_variants:
        run.stage("variants", variants)
    if args.fidelity and args.fidelity.is_file():
        run.results["fidelity"] = json.loads(args.fidelity.read_text())
    run.results["headline"] = gpu_report.headline(run.results)
    run.save()
    written = gpu_report.write_report(run.results, args.report_dir)
    say(f"wrote {', '.join(str(path) for path in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
