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

.PHONY: install demo test repository clean

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

# Regenerate the checked-in GPU deployment layout (configs and code, no weights).
repository: install
	$(BIN)/clip-triton export --random-init ViT-B/32 --target gpu --configs-only --repository model_repository

clean:
	rm -rf $(VENV) demo_repository .pytest_cache
