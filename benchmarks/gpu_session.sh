#!/usr/bin/env bash
# The GPU measurements of issue 33 that fit one short lease, as two commands.
#
#   source .gpu/on-device.sh && bash benchmarks/gpu_session.sh OUTDIR PART [BUDGET_S] [-S k=v ...]
#
# Each step runs under its own time limit and only while the budget (default
# 540 s) lasts, and writes OUTDIR/NAME.txt, so a step that is cut short loses
# only itself. PART a (about 4 minutes on one H100):
#   pipeline   the five stages of the default pipeline, each as its own process
#              (benchmarks/pipeline.py), into WORK/w0: the per-stage table
#   rerun      the three model stages again over the same store, compute.graphs off:
#              how much two runs without graphs differ (the noise to compare with)
#   graphs     the model stages and evaluate over the same store, compute.graphs on
#   cpu_eval   evaluate on the CPU (OCD_DEVICE=cpu) over w0's artifacts, the deep
#              ensemble off: the CPU-CUDA difference on one set of artifacts
#   overfit    benchmarks/overfit_throughput.py: the store path with 1, 2 and 4
#              writer threads against compute only
# PART b (about 7 minutes): the paper preset (`ocd preset paper`: the `paper`
#   U-Net, the full 1,500 diffusion steps) over w0's base model (trained first if
#   this machine has none): paper (score_layers, overfit, train_diffusion) then
#   paper_eval (evaluate, the deep ensemble off: it does not depend on the preset).
# PART unet: benchmarks/unet.py, tf32 and bf16 + compile with the warm-up timed apart.
# Extra arguments go to every pipeline.py call (e.g. -S data.max_train=300 for a
# dry run on a CPU); OUTDIR/metrics.json gathers every run's metrics.
set -uo pipefail
usage="usage: gpu_session.sh OUTDIR a|b|unet [BUDGET_S] [-S k=v ...]"
out=${1:?$usage}
part=${2:?$usage}
budget=${3:-540}
shift 3 2>/dev/null || shift $#
extra=("$@")
mkdir -p "$out"
work=${WORK:-/tmp/ocd-gpu}
[ "$part" = a ] && rm -rf "$work"
mkdir -p "$work"
here=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)
py=${PYTHON:-python3}

left() { echo $(( budget - ($(date +%s) - start) )); }

# step NAME LIMIT CMD...: run CMD with at most LIMIT seconds (less if the budget is nearly spent)
step() {
  local name=$1 limit=$2; shift 2
  local remain; remain=$(left)
  if [ "$remain" -lt 20 ]; then echo "== $name: skipped, $remain s of the budget left" | tee "$out/$name.txt"; return; fi
  [ "$limit" -gt "$remain" ] && limit=$remain
  echo "== $name (limit $limit s, $remain s of the budget left)"
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s" | tee -a "$out/$name.txt"
  tail -n 25 "$out/$name.txt"
}

copy_work() { mkdir -p "$work/$2"; cp -r "$work/$1/artifacts" "$work/$2/"; }
models="train-diffusion train-scale train-regressor"  # the three stages that train on the store

# at most 8 files come back from a device run: every run's metrics go into one
gather() {
  $py -c '
import json, sys
from pathlib import Path
out, work = Path(sys.argv[1]), Path(sys.argv[2])
merged = {}
for run in sorted(work.glob("w*")):
    for stage in ("base", "diffusion", "eval"):
        f = run / "artifacts" / stage / "metrics.json"
        if f.is_file():
            merged[f"{run.name}-{stage}"] = json.loads(f.read_text())
(out / "metrics.json").write_text(json.dumps(merged, indent=1))
' "$out" "$work"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
lscpu | grep -E 'Model name|^CPU\(s\)' 2>&1

if [ "$part" = a ]; then
  step pipeline 200 $py "$here/benchmarks/pipeline.py" --work "$work/w0" "${extra[@]}"
  [ -f "$work/w0/artifacts/eval/metrics.json" ] || { echo "the pipeline did not finish: nothing more to do"; exit 1; }
  copy_work w0 w1
  step rerun 90 $py "$here/benchmarks/pipeline.py" --work "$work/w1" --stages $models "${extra[@]}"
  copy_work w0 w2
  step graphs 150 $py "$here/benchmarks/pipeline.py" --work "$work/w2" --stages $models evaluate \
    -S compute.graphs=true "${extra[@]}"
  copy_work w0 w3
  step cpu_eval 150 env OCD_DEVICE=cpu $py "$here/benchmarks/pipeline.py" --work "$work/w3" --stages evaluate \
    -S evaluate.deep_ensemble=false "${extra[@]}"
  gather
  # run in w0, so that the benchmark overfits w0's base model
  (cd "$work/w0" && PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" \
    step overfit 60 $py "$here/benchmarks/overfit_throughput.py" --naive 20)
  rm -rf "$work/w1" "$work/w2" "$work/w3"  # w0 stays for part b
fi

if [ "$part" = b ]; then
  if [ ! -f "$work/w0/artifacts/base/model.pt" ]; then
    step base 120 $py "$here/benchmarks/pipeline.py" --work "$work/w0" --stages train-base "${extra[@]}"
  fi
  rm -rf "$work/w4"; mkdir -p "$work/w4/artifacts"; cp -r "$work/w0/artifacts/base" "$work/w4/artifacts/"
  [ -d "$work/w0/artifacts/ensemble" ] && cp -r "$work/w0/artifacts/ensemble" "$work/w4/artifacts/"
  preset=$(cd "$here" && $py -c "from stages.cli import app; app()" preset paper)
  # shellcheck disable=SC2086
  step paper 330 $py "$here/benchmarks/pipeline.py" --work "$work/w4" \
    --stages score-layers overfit $models $preset "${extra[@]}" ${PAPER_EXTRA:-}
  gather
  # shellcheck disable=SC2086
  step paper_eval 300 $py "$here/benchmarks/pipeline.py" --work "$work/w4" --stages evaluate \
    $preset -S evaluate.deep_ensemble=false "${extra[@]}" ${PAPER_EXTRA:-}
  gather
fi

if [ "$part" = unet ]; then
  # shellcheck disable=SC2086
  step unet 500 $py "$here/benchmarks/unet.py" --variants tf32 bf16 bf16-compile --steps 20 ${UNET_EXTRA:-}
fi
echo "== done in $(( $(date +%s) - start )) s"
