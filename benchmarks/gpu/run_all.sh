#!/usr/bin/env bash
# One prepared GPU session: every GPU benchmark of the suite, each under its own time cap, results
# bundled into $OUT (the device tool brings back at most 8 files). Usage on a CUDA machine:
#   OUT=/some/dir bash benchmarks/gpu/run_all.sh [name ...]     (names: rank fused sample rewards vlm train)
# Missing packages (diffusers, open_clip, zarr) may be carried as wheels in .whl/.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
RES=/tmp/gpu-results
mkdir -p "$RES"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$RES/device.txt"

want=${*:-"rank fused sample rewards vlm train"}
step() {  # name, hard cap (s), command...
  local name=$1 cap=$2; shift 2
  case " $want " in *" $name "*) ;; *) return ;; esac
  echo "=== $name (cap ${cap}s): $*"
  local t0=$SECONDS
  timeout -k 5 "$cap" "$@" > "$RES/$name.log" 2>&1
  echo "=== $name exit $? after $((SECONDS - t0))s"
  tail -n 40 "$RES/$name.log"
}
step rank   170  python3 benchmarks/gpu/rank_ensemble.py --out "$RES/rank" --max-seconds 150 --ns 1000000
step fused   70  python3 benchmarks/gpu/fused_loss.py --out "$RES/fused" --max-seconds 50
step sample 120  python3 benchmarks/gpu/sample_flux.py --out "$RES/sample" --max-seconds 90
step rewards 120 python3 benchmarks/gpu/rewards_full.py --out "$RES/rewards" --max-seconds 95
step vlm    140  python3 benchmarks/gpu/rewards_vlm.py --out "$RES/vlm" --max-seconds 115
step train   80  python3 benchmarks/gpu/train_refcache.py --out "$RES/train" --max-seconds 20
tar -czf "$OUT/gpu-results.tar.gz" -C "$RES" .
