#!/bin/bash
# Run here, on a machine with package access and ../shared beside the repository: fills .gpu/ (ignored by
# git, about 55 MB), everything an offline GPU host with Python 3.12 and CUDA torch/torchvision needs for
# `make test-gpu` and `make bench-gpu`: the trimmed Triton 2.51 and numpy 1.26.4 (../shared/tools/
# gpu-host-bundle.sh), the gRPC client's wheels, and the shared photos. Then tools/gpu_host/run.sh runs there
# with .gpu carried beside the working tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu && mkdir -p .gpu/whl .gpu/shared/golden
../shared/tools/gpu-host-bundle.sh .gpu/bundle
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl tritonclient==2.73.0 grpcio==1.85.3 protobuf==6.33.6 \
  python-rapidjson==1.25
cp -r ../shared/images .gpu/shared/
cp ../shared/golden/manifest.json ../shared/golden/*.features.npz .gpu/shared/golden/
du -sh .gpu
