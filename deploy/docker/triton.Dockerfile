# Triton for CLIP image features: NVIDIA's image plus what the preprocessing model (Python backend) imports.
# Pinned to 24.10, whose Triton (2.51.0) is the version the test-suite runs locally from the
# nvidia-pytriton wheel; 24.10 ships Python 3.10 on Ubuntu 22.04, CUDA 12.6 (driver >= 560, or a
# data-center driver of the branches NVIDIA lists for forward compatibility).
# Build context: the repository root (see docker-compose.yml).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# numpy < 2: the 2.51 Python-backend stub returns empty tensors with numpy 2 (same pin as the `serve` extra).
# Pillow 12.3.0: the newest release for Python 3.10; it reproduces ../shared/golden/pixels-224.npz exactly
# (max abs diff 0 on every golden image, same as the Pillow 13 the tests use).
# pyspng: the faster, pixel-identical PNG decoder the preprocessing uses when present. openvino: not used
# by the native backends (the image has its own OpenVINO backend); it is for a CPU-target repository,
# whose clip_visual runs OpenVINO inside the Python backend. Both have cp310 manylinux_2_28 wheels.
RUN python3 -m pip install --no-cache-dir "numpy==1.26.4" "pillow==12.3.0" "pyspng==0.1.4" "openvino==2026.4.1"
# The GPU target's models run torch in the Python backend: the fp16 TorchScript model, and the GPU
# preprocessing (torchvision's nvJPEG decoding, torch's resize). Builds for the image's CUDA 12.6 and
# Python 3.10; numpy stays at 1.26.4 (the stub needs numpy < 2; torch works with either).
RUN python3 -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu126 \
        "torch==2.6.0" "torchvision==0.21.0" \
    && python3 -c "import numpy; assert numpy.__version__ == '1.26.4', numpy.__version__"

# The entrypoint runs tritonserver with the same package as `clip-triton serve` (command line, probes,
# supervisor); it imports only the standard library.
COPY serve/clip_triton_serve /opt/clip-triton/clip_triton_serve
COPY deploy/docker/triton/start.py deploy/docker/triton/healthcheck.py /opt/clip-triton/
ENV PYTHONPATH=/opt/clip-triton

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 CMD ["python3", "/opt/clip-triton/healthcheck.py"]
ENTRYPOINT ["python3", "/opt/clip-triton/start.py"]
