#!/usr/bin/env bash
# The whole GPU run in one call (device tool): checkpoint save/load of CUDA tensors against raw
# disk and PyTorch DCP, then the CUDA-resident parts of the test suite. Results land in $OUT.
#   device run: bash tools/gpu_run.sh
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench-results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 - <<'PY'
import torch, tempfile, bytecheckpoint as bcp
from torch.distributed.device_mesh import init_device_mesh
# CUDA tensors of every kind save and load (into CUDA targets, non-contiguous included)
g = torch.Generator().manual_seed(0)
src = {"w": torch.randn(33, 17, generator=g).cuda(), "b": torch.randn(5, generator=g).to(torch.bfloat16).cuda(),
       "t": torch.randn(9, 4, generator=g).cuda().t(), "flat": bcp.FlatShard(torch.arange(40.).cuda(), (5, 8), 0)}
d = tempfile.mkdtemp()
bcp.save(d, src)
dst = {"w": torch.zeros(33, 17, device="cuda"), "b": torch.zeros(5, dtype=torch.bfloat16, device="cuda"),
       "t": torch.zeros(9, 4, device="cuda").t(), "flat": bcp.FlatShard(torch.zeros(16, device="cuda"), (5, 8), 20)}
bcp.load(d, dst)
assert torch.equal(dst["w"], src["w"]) and torch.equal(dst["b"], src["b"]) and torch.equal(dst["t"], src["t"])
assert torch.equal(dst["flat"].data, torch.arange(20., 36.).cuda())
print("CUDA save/load check: OK")
PY
python3 -m pytest -q -p no:cacheprovider tests/bytecheckpoint/test_staging.py tests/bytecheckpoint/test_single_process.py
python3 tools/bench_checkpoint.py --device cuda --mib "${BENCH_MIB:-8192}" --tensors 32 --rounds "${BENCH_ROUNDS:-3}" \
    --out "$OUT/checkpoint-cuda.json"
