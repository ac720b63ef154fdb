# Everything installs itself into .venv/ from a machine with only Python 3, pip and gcc.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch 2.14.1 with torchvision 0.29.1 (CUDA builds that also run on CPU): torchvision is what open_clip imports
# (checkpoint parity tests) and what the GPU decode path calls; set TORCH=torch torchvision for your platform's build.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
SHARED ?= ../shared
DEMO_IMAGES ?= $(if $(wildcard $(SHARED)/images),$(SHARED)/images,build/clip_triton_export/sample_images)
CHECKPOINT ?=
PYTEST_ARGS ?=

.PHONY: install install-gpu demo test test-gpu repository loadtest bench bench-gpu bench-gpu-rehearsal soak overload-report clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[export,serve,test,load]"
	touch $@

# A GPU host: a CUDA build of torch with torchvision (nvJPEG), then `make test-gpu` and `make bench-gpu`.
# On a host where packages come from elsewhere, run them with PY=python3 and the packages on PYTHONPATH.
install-gpu:
	$(MAKE) install TORCH="torch torchvision"
PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

demo: install
	$(BIN)/clip-triton demo --images $(DEMO_IMAGES) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The GPU target on a GPU through the real Triton: fp16 parity, nvJPEG fidelity, bad images alone (skips
# without a CUDA GPU). GPU_FIDELITY: where the measured fidelity goes, for bench-gpu's report.
GPU_FIDELITY ?= bench_out/gpu/fidelity.json
test-gpu:
	mkdir -p $(dir $(GPU_FIDELITY))
	CLIP_TRITON_GPU_FIDELITY=$(GPU_FIDELITY) $(PY) -m pytest -m gpu -p no:cacheprovider tests/test_gpu.py $(PYTEST_ARGS)

# Steady load against a real server, sampling errors and server memory (reports/soak.md + .csv).
SOAK_SECONDS ?= 600
soak: install
	$(BIN)/python -m tools.soak --seconds $(SOAK_SECONDS) --images $(DEMO_IMAGES) --output reports

# Drive far beyond capacity against bounded queues; latency figures per phase (reports/overload.md + .json).
OVERLOAD_SECONDS ?= 20
overload-report: install
	$(BIN)/python -m tools.overload --seconds $(OVERLOAD_SECONDS) --images $(DEMO_IMAGES) --output reports

# Regenerate the checked-in GPU deployment layout (configs and code, no weights).
repository: install
	$(BIN)/clip-triton export --random-init ViT-B/32 --target gpu --configs-only --repository model_repository

# Load test: a bounded headless locust run against 127.0.0.1 (a server started on a demo repository,
# or LOAD_URL / LOAD_REPOSITORY / CHECKPOINT), CSV + HTML in out/loadtest/, then the SLO check.
LOAD_URL ?=
LOAD_REPOSITORY ?=
LOAD_USERS ?= 4
LOAD_RUN_TIME ?= 20s
LOAD_P99_MS ?= 2000
LOAD_MAX_FAILURES ?= 0
LOAD_ARGS ?=

loadtest: install
	$(BIN)/python -m load_tests.run --users $(LOAD_USERS) --run-time $(LOAD_RUN_TIME) \
		--p99-ms $(LOAD_P99_MS) --max-failures $(LOAD_MAX_FAILURES) --images $(DEMO_IMAGES) \
		$(if $(LOAD_URL),--url $(LOAD_URL)) $(if $(LOAD_REPOSITORY),--repository $(LOAD_REPOSITORY)) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(LOAD_ARGS)

# Benchmark report (bench/report/: report.md, PNG plots, results.json); about 10 minutes on 2 cores.
BENCH_SECONDS ?= 10
BENCH_REPORT ?= bench/report
BENCH_ARGS ?=

bench: install
	$(BIN)/python -m bench --seconds $(BENCH_SECONDS) --report-dir $(BENCH_REPORT) --images $(DEMO_IMAGES) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(BENCH_ARGS)

# GPU benchmark report (bench/report/gpu/: report.md, throughput.png, results.json); a few minutes on one GPU.
BENCH_GPU_ARGS ?=
bench-gpu:
	$(PY) -m bench.gpu --report-dir bench/report/gpu --images $(DEMO_IMAGES) --fidelity $(GPU_FIDELITY) $(BENCH_GPU_ARGS)

# The same benchmark code on this machine's CPU, small (bench_out/gpu-rehearsal/): checks it before a GPU
# host's time is spent. Its figures are not GPU figures. CI runs it too (test_bench_gpu_rehearsal). With the
# tiny golden checkpoint a few minutes; without ../shared, random-init ViT-B/32 in fp16 on a CPU (far slower).
REHEARSAL_CHECKPOINT ?= $(wildcard $(SHARED)/golden/tiny-vit-b32.pt)
bench-gpu-rehearsal: install
	$(BIN)/python -m bench.gpu --rehearse-on-cpu --images $(DEMO_IMAGES) \
		$(if $(REHEARSAL_CHECKPOINT),--checkpoint $(REHEARSAL_CHECKPOINT)) $(BENCH_GPU_ARGS)

clean:
	rm -rf $(VENV) demo_repository .pytest_cache out bench_out
