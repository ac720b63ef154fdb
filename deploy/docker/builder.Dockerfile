# Model builder: exports an OpenAI CLIP checkpoint into Triton's model repository (`clip-triton export
# --target gpu`). It only exports, never serves, so it carries CPU-only torch (no CUDA wheels, ~10x smaller).
# Build context: the repository root (see docker-compose.yml).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# Installed first, from PyTorch's CPU index, so that `.[export]` below finds torch already satisfied
# and does not pull the CUDA build from PyPI. Override with --build-arg TORCH_SPEC=torch==X.Y.Z.
ARG TORCH_SPEC=torch
RUN pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY build ./build
COPY serve ./serve
COPY cli ./cli
RUN pip install ".[export]"

COPY deploy/docker/builder/build-repository.sh /usr/local/bin/build-repository
COPY deploy/docker/builder/apply_overrides.py /usr/local/bin/apply_overrides.py
ENTRYPOINT ["/usr/local/bin/build-repository"]
