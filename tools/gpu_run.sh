#!/usr/bin/env bash
# The whole GPU run in one call (device tool; kind nvidia-h200-x2 for the 2-GPU parts, -x4 or -x8 for 4 and 8 GPUs):
#   check  - ours saves and loads every kind of CUDA tensor
#   plain  - 1 GPU: plain state dict of BENCH_MIB MiB (8 GiB) on cuda, every system (ours sync and
#            async, DCP save / async_save thread and process) and the floors (fsync'd raw write /
#            read, pinned device-to-host / host-to-device)
#   fsdp2  - every GPU (2, 4 or 8): FSDP2 + AdamW over NCCL, BENCH_MIB_PER_RANK MiB (3 GiB) per rank,
#            every system, then each format's checkpoint loaded resharded at half the GPUs (tensors checked)
#   tests  - the CUDA-resident tests, with whatever time is left
#   megatron - tools/gpu_megatron.py's plan for the GPUs there: 2: TP2 -> TP1, TP2; 4: TP2·PP2 ->
#            TP1·DP2, TP4; 8: TP2·PP2·DP2 -> TP1·DP4, TP4·DP2, TP1; held-out loss and next steps equal
#            (GPU_RUN_PARTS=megatron; megatron-core from shared/wheels when it is not installed)
#   nccl   - 2+ GPUs (not in the default parts): `netsim measure --backend nccl`, one rank per GPU, the
#            four collectives over NCCL_SIZES (1K:1G); nccl-<collective>.json/.csv (busbw tables)
#            run it alone: GPU_RUN_PARTS=nccl bash tools/gpu_run.sh   (kind nvidia-h200-x2)
# JSON and the printed tables land in $OUT. The benchmarks' rounds are cut to fit GPU_RUN_BUDGET
# seconds in all (default 570: the device tool ends a command at 600 s); each part's files are
# written as soon as it ends. ByteCheckpoint 0.0.2 runs in the fsdp2 part only when its wheels
# (for this machine's python) are found under shared/ (no registry there); otherwise skipped.
# At 8 GiB a plain round takes ~2 min on an H200 (every system saves and loads 8 GiB), so one call
# fits 2 plain rounds and 2 fsdp2 rounds; for 3+ rounds each, make two calls:
#   GPU_RUN_PARTS="check plain" bash tools/gpu_run.sh;  GPU_RUN_PARTS="fsdp2 tests" bash tools/gpu_run.sh
#   device run: bash tools/gpu_run.sh          (kind nvidia-h200-x2)
#   knobs: GPU_RUN_PARTS ("check plain fsdp2 tests"), BENCH_MIB (8192), BENCH_TENSORS (32),
#          BENCH_MIB_PER_RANK (3072), BENCH_ROUNDS (3), BENCH_RESHARD_ROUNDS (2), GPU_RUN_BUDGET (570),
#          BENCH_DIR (scratch on the disk to measure; default bench-results/scratch-gpu)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench-results}"
SCRATCH="${BENCH_DIR:-$PWD/bench-results/scratch-gpu}"
PARTS="${GPU_RUN_PARTS:-check plain fsdp2 tests}"
ROUNDS="${BENCH_ROUNDS:-3}"
END=$((SECONDS + ${GPU_RUN_BUDGET:-570}))
left() { echo $((END - SECONDS)); }
has() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT" "$SCRATCH"
status=0
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
{
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    echo "gpus: $GPUS"
    df -h "$SCRATCH" | tail -1
    python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)'
} 2>&1 | tee "$OUT/gpu.txt"

if has check; then
    timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/cuda-check.txt" || status=1
import torch, tempfile, bytecheckpoint as bcp
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
fi

# ByteCheckpoint 0.0.2's wheels, if someone carried them (shared/ has no registry behind it)
PEER_ARGS=()
wheel=$(find shared -name 'bytecheckpoint-0.0.2-*.whl' 2>/dev/null | head -1 || true)
if [[ -n "$wheel" ]]; then
    PEER_ARGS=(--peers bytecheckpoint --peer-venv /tmp/bcp-peer-venv --peer-wheels "$(dirname "$wheel")")
    echo "ByteCheckpoint 0.0.2 wheels found in $(dirname "$wheel"): the fsdp2 part runs it too"
else
    echo "ByteCheckpoint 0.0.2: no wheels under shared/ (no registry here): skipped"
fi

if has plain; then
    # leave the 2-GPU part about 270 s when it is to run
    if has fsdp2 && [[ "$GPUS" -ge 2 ]]; then
        budget=$(( $(left) - 300 )); (( budget > 300 )) && budget=300
    else
        budget=$(( $(left) - 90 ))
    fi
    (( budget < 60 )) && budget=60
    echo "== 1 GPU, plain ${BENCH_MIB:-8192} MiB; rounds budget ${budget}s, $(left)s left"
    timeout --signal=INT $(( $(left) - 5 )) python3 tools/bench_checkpoint.py --mode plain --device cuda \
        --mib "${BENCH_MIB:-8192}" --tensors "${BENCH_TENSORS:-32}" --rounds "$ROUNDS" --budget-s "$budget" \
        --dir "$SCRATCH" --out "$OUT/checkpoint-cuda-plain.json" 2>&1 | tee "$OUT/checkpoint-cuda-plain.txt" || status=1
fi

if has fsdp2; then
    if [[ "$GPUS" -lt 2 ]]; then
        echo "== FSDP2: skipped, this machine has $GPUS GPU(s) (use a kind with 2 or more)" | tee "$OUT/checkpoint-cuda-fsdp2.txt"
    else
        budget=$(( $(left) - 130 ))          # setup, the resharded loads and the report after the rounds
        (( ${#PEER_ARGS[@]} )) && budget=$(( budget / 2 ))   # the peer reruns its own rounds
        (( budget > 220 )) && budget=220
        (( budget < 40 )) && budget=40
        echo "== $GPUS GPUs, FSDP2 over NCCL, ${BENCH_MIB_PER_RANK:-3072} MiB per rank; rounds budget ${budget}s, $(left)s left"
        timeout --signal=INT $(( $(left) - 5 )) python3 tools/bench_checkpoint.py --mode fsdp2 --device cuda --ranks "$GPUS" \
            --mib-per-rank "${BENCH_MIB_PER_RANK:-3072}" --rounds "$ROUNDS" --budget-s "$budget" \
            --reshard-rounds "${BENCH_RESHARD_ROUNDS:-2}" --dir "$SCRATCH" --peer-timeout $(( $(left) - 60 )) \
            "${PEER_ARGS[@]}" --out "$OUT/checkpoint-cuda-fsdp2.json" 2>&1 | tee "$OUT/checkpoint-cuda-fsdp2.txt" || status=1
    fi
fi
rm -rf "$SCRATCH"

if has megatron; then
    # megatron-core is not installed there: its wheel travels in shared/wheels (pip download, see docs/megatron.md)
    if ! python3 -c 'import megatron.core' 2>/dev/null; then
        wheel=$(find shared -name 'megatron_core-0.16.1-*.whl' 2>/dev/null | head -1 || true)
        [[ -n "$wheel" ]] && python3 -m pip install -q --no-index --no-deps --target /tmp/megatron-site "$wheel" \
            && export PYTHONPATH="$PYTHONPATH:/tmp/megatron-site"
    fi
    if [[ "$GPUS" -lt 2 ]]; then
        echo "== Megatron: skipped, this machine has $GPUS GPU(s) (use a kind with 2 or more)" | tee "$OUT/megatron.txt"
    else
        echo "== Megatron GPT on $GPUS GPUs (NCCL), tools/gpu_megatron.py's plan; $(left)s left"
        timeout $(( $(left) - 5 )) python3 tools/gpu_megatron.py --dir "$SCRATCH/megatron" --out "$OUT/megatron.json" \
            2>&1 | grep -v -i warn | tail -20 | tee "$OUT/megatron.txt" || status=1
        rm -rf "$SCRATCH/megatron"
    fi
fi
if has tests; then
    if (( $(left) > 60 )); then
        timeout $(( $(left) - 5 )) python3 -m pytest -q -p no:cacheprovider tests/bytecheckpoint/test_staging.py \
            tests/bytecheckpoint/test_single_process.py tests/bytecheckpoint/test_async_save.py -k "not on_ranks and not killed" 2>&1 | tail -15 | tee "$OUT/cuda-tests.txt" || status=1
    else
        echo "CUDA tests skipped: $(left)s left" | tee "$OUT/cuda-tests.txt"
    fi
fi
if has nccl; then
    if [[ "$GPUS" -lt 2 ]]; then
        echo "== NCCL sweep: skipped, this machine has $GPUS GPU(s) (use the nvidia-h200-x2 kind)" | tee "$OUT/nccl.txt"
    else
        for coll in allreduce allgather reducescatter alltoall; do
            (( $(left) > 30 )) || { echo "NCCL $coll skipped: $(left)s left" | tee -a "$OUT/nccl.txt"; continue; }
            echo "== NCCL $coll, $GPUS ranks, sizes ${NCCL_SIZES:-1K:1G}; $(left)s left" | tee -a "$OUT/nccl.txt"
            timeout $(( $(left) - 10 )) python3 -c 'import sys; from netsim.cli import main; main(sys.argv[1:])' \
                measure --backend nccl --collective "$coll" --ranks "$GPUS" --sizes "${NCCL_SIZES:-1K:1G}" \
                --iters 20 --warmup 5 --timeout 120 --json > "$OUT/nccl-$coll.json" 2>> "$OUT/nccl.txt" || status=1
            python3 -c 'import sys; from netsim.measure_schema import load_report; from netsim.measure.report import to_csv
print(to_csv(load_report(sys.argv[1])), end="")' "$OUT/nccl-$coll.json" 2>&1 | tee "$OUT/nccl-$coll.csv" || status=1
        done
    fi
fi
echo "gpu_run.sh: done with status $status, $(left)s of the budget left"
exit $status
