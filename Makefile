# Everything installs itself into .venv/ from a machine with only Python 3, pip and gcc.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 resolves to a local CPU wheel on our machines; set TORCH=torch for your platform's build.
TORCH  ?= torch==2.13.0
SHARED ?= ../shared
DEMO_IMAGES ?= $(if $(wildcard $(SHARED)/images),$(SHARED)/images,examples/images)
CHECKPOINT ?=
PYTEST_ARGS ?=

.PHONY: install demo test repository soak overload-report clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[export,serve,test,load]"
	touch $@

demo: install
	$(BIN)/clip-triton demo --images $(DEMO_IMAGES) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Steady load against a real server, sampling errors and server memory (reports/soak.md + .csv).
SOAK_SECONDS ?= 600
soak: install
	$(BIN)/python -m tools.soak --seconds $(SOAK_SECONDS) --images $(SHARED)/images --output reports

# Drive far beyond capacity against bounded queues; latency figures per phase (reports/overload.md + .json).
OVERLOAD_SECONDS ?= 20
overload-report: install
	$(BIN)/python -m tools.overload --seconds $(OVERLOAD_SECONDS) --images $(SHARED)/images --output reports

# Regenerate the checked-in GPU deployment layout (configs and code, no weights).
repository: install
	$(BIN)/clip-triton export --random-init ViT-B/32 --target gpu --configs-only --repository model_repository

clean:
	rm -rf $(VENV) demo_repository .pytest_cache
