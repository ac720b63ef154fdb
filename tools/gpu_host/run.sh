#!/bin/bash
# Run on the GPU host (offline; Python 3.12 with CUDA torch and torchvision preinstalled) from the repository
# root, with .gpu/ from tools/gpu_host/prepare.sh beside it: installs numpy<2 into the interpreter's own
# site-packages (Triton's Python stub ignores PYTHONPATH), unpacks Triton, then `make test-gpu` and
# `make bench-gpu`, each under its own time limit. Logs and reports go to $OUT (default: out/gpu_host).
# PHASE splits the work over two device calls of at most 10 minutes each (the machine stays warm between;
# the two limits below leave 45 s of a 600 s call for setup):
#   PHASE=main      test-gpu, then bench-gpu without the variants (the defaults' figures)
#   PHASE=variants  bench-gpu --variants-only: VARIANTS added to main's results.json and report
#   PHASE=all       both in one call (the default; it may pass 10 minutes)
#   TEST_TIMEOUT=270 BENCH_TIMEOUT=285 SKIP_TESTS=0 VARIANTS=no-cuda-graphs,preprocess-4,... BENCH_ARGS='...'
# The report is rendered again from results.json at the end, so a bench cut short by its limit still has one.
set -u
cd "$(dirname "$0")/../.."
PHASE=${PHASE:-all}
case "$PHASE" in main | variants | all) ;; *) echo "PHASE must be main, variants or all, not '$PHASE'" >&2; exit 2 ;; esac
STATUS=0  # the worst exit status of the tests and the bench, this script's own
OUT=${OUT:-out/gpu_host}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
date -u; T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
nproc; python3 --version
python3 -m pip install -q --no-index --no-deps --force-reinstall .gpu/bundle/numpy-1.26.4-*.whl
mkdir -p /tmp/tr && tar xJf .gpu/bundle/triton-trim.tar.xz -C /tmp/tr
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl
mkdir -p ../shared && cp -r .gpu/shared/. ../shared/
export PYTHONPATH=/tmp/site:$PWD/client:$PWD/build:$PWD/serve:$PWD/cli:$PWD
export CLIP_TRITON_HOME=/tmp/tr/pytriton/tritonserver PYTHONUNBUFFERED=1
python3 -c "import numpy, torch, torchvision, PIL, tritonclient.grpc; print('numpy', numpy.__version__, 'torch', \
torch.__version__, 'torchvision', torchvision.__version__, 'pillow', PIL.__version__, torch.cuda.get_device_name())"
echo "setup: $(( $(date +%s) - T0 )) s"
if [ "${SKIP_TESTS:-0}" != 1 ] && [ "$PHASE" != variants ]; then
  timeout "${TEST_TIMEOUT:-270}" make test-gpu PY=python3 PYTEST_ARGS='-q -rs --durations=12'
  CODE=$?; [ $CODE -gt $STATUS ] && STATUS=$CODE
  echo "test-gpu exit $CODE at $(( $(date +%s) - T0 )) s"
  cp bench_out/gpu/fidelity.json "$OUT/" 2>/dev/null
fi
VARIANTS=${VARIANTS:-no-cuda-graphs,preprocess-4,queue-delay-500,per-size-resize}
case "$PHASE" in
  main) MODE="--no-variants --nvjpeg-processes 4,8" ;;
  variants) MODE="--variants-only --variants $VARIANTS" ;;
  all) MODE="--variants $VARIANTS" ;;
esac
timeout "${BENCH_TIMEOUT:-285}" make bench-gpu PY=python3 \
  BENCH_GPU_ARGS="${BENCH_ARGS:---seconds 3 --warmup 1.5} $MODE"
CODE=$?; [ $CODE -gt $STATUS ] && STATUS=$CODE
echo "bench-gpu ($PHASE) exit $CODE at $(( $(date +%s) - T0 )) s"
[ -f bench/report/gpu/results.json ] && python3 -m bench.gpu_report bench/report/gpu/results.json
cp bench/report/gpu/results.json bench/report/gpu/report.md bench/report/gpu/throughput.png "$OUT/" 2>/dev/null
grep -E "^E|error|Error|CUDA graphs" bench_out/gpu/tritonserver.log 2>/dev/null | tail -30 > "$OUT/tritonserver-notes.log"
if [ -f bench/report/gpu/report.md ]; then  # the figures read first, in the call's output too
  echo "----- report: headline and where clip_preprocess's time goes -----"
  sed -n '/^## Headline/,/^## Decoding alone/p' bench/report/gpu/report.md | head -40
  grep -A14 -E "^(Where clip_preprocess's time goes|The whole GPU transform alone, by stage)" \
    bench/report/gpu/report.md | head -90
fi
exit $STATUS
