#!/usr/bin/env bash
# The accelerator check: on a machine whose JAX runs on a GPU (or TPU), in at most
# 8 minutes on one GPU:
#   1. the accelerator tests (tests/test_accelerator.py: the step against the CPU,
#      'xla' vs 'fast' kernels, bfloat16, the jax.export artifact);
#   2. the README's main job, the default config (googlenet_bn at half width on
#      the digits, 12 epochs), which must reach MIN_TOP1 test top-1;
#   3. the benchmark against torchvision at batch 256, 224x224, bfloat16 and
#      float32, with MFU, written to experiments/results/accelerator_<date>_<device>.{md,json}.
# Each part runs under `timeout`; the benchmark gets what is left of TOTAL_BUDGET_S.
#
# --dry-run checks on a CPU (as CI does) what can be checked without an
# accelerator, in about 2 minutes on 2 cores: the arguments, that the commands parse
# (train --help, the config, the benchmark's cases and peaks), that the accelerator
# tests collect and skip, and the benchmark command with the same flags on a tiny
# model, one case, then the merge (results in a temporary directory).
#
# Needs the project's requirements (requirements.txt, requirements-test.txt for
# torch) with a CUDA (or TPU) build of jax, and a CUDA build of torch for the
# comparison. Run from anywhere; it works in the repository root.
set -euo pipefail

usage="usage: experiments/accelerator_check.sh [--dry-run] [--peak-tflops DTYPE=TFLOPS,...] [--torch-modes eager[,compile]] [--keep-workdir]"

# Dense (no sparsity) peaks of the H100/H200 SXM (both Hopper, the same tensor
# cores; NVIDIA's H200 datasheet): bfloat16 989 TFLOP/s; TF32 494 (489.5-494.7 by
# datasheet revision), which is what float32 matrix products and convolutions run
# in on these GPUs by default in JAX and torch (plain FP32 is 67). The sparse
# figures (1979 / 989) are not what dense convolutions can reach.
HOPPER_SXM_PEAKS="bfloat16=989,float32=494"
MIN_TOP1=0.95          # the default config reached 97.5-99.7 % (README); a broken step does not
TOTAL_BUDGET_S=480     # the whole check on one GPU: 8 minutes
PREFLIGHT_TIMEOUT_S=60
TESTS_TIMEOUT_S=150
TRAIN_TIMEOUT_S=120
BENCH_MIN_S=60         # a benchmark run given less than this is left out (said so)
BENCH_CASES="train:256:224,infer:256:224"
BENCH_DTYPES="bfloat16 float32"  # one process each, so a timeout loses only the second
DRY_TIMEOUT_S=110      # each dry-run step

dry_run=0
peaks=""
torch_modes="eager"
keep_workdir=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --peak-tflops) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; peaks="$2"; shift ;;
    --peak-tflops=*) peaks="${1#*=}" ;;
    --torch-modes) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; torch_modes="$2"; shift ;;
    --torch-modes=*) torch_modes="${1#*=}" ;;
    --keep-workdir) keep_workdir=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
case "$torch_modes" in
  eager|compile|eager,compile|compile,eager) ;;
  *) echo "bad --torch-modes '$torch_modes': eager, compile or eager,compile" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/accelerator_check.XXXXXX")"
cleanup() { if [ "$keep_workdir" = 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT

step_number=0
# run_step NAME TIMEOUT_S LOG COMMAND...: prints the step, runs COMMAND under timeout and
# prints its duration and outcome. LOG: '-' (output to the terminal), 'tee:PATH' (to
# the terminal and PATH) or 'file:PATH' (to PATH alone).
run_step() {
  local name="$1" limit="$2" log="$3" start rc took
  shift 3
  step_number=$((step_number + 1))
  echo "== step $step_number: $name (timeout ${limit} s)"
  start=$(date +%s.%N)
  set +e
  case "$log" in
    tee:*) timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "${log#tee:}"; rc=${PIPESTATUS[0]} ;;
    file:*) timeout --kill-after=10 "$limit" "$@" > "${log#file:}" 2>&1; rc=$? ;;
    *) timeout --kill-after=10 "$limit" "$@"; rc=$? ;;
  esac
  set -e
  took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" = 0 ]; then
    echo "-- step $step_number: $name: ok (${took} s)"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "-- step $step_number: $name: TIMED OUT after ${took} s (limit ${limit} s)"
  else
    echo "-- step $step_number: $name: FAILED, exit $rc (${took} s)"
  fi
  return "$rc"
}

failures=()
fail() { failures+=("$1"); }

# --- Where JAX runs.
if [ "$dry_run" = 1 ]; then
  export JAX_PLATFORMS=cpu  # the dry run is the CPU path, also on a machine with a GPU
fi
run_step "preflight: JAX's backend" "$PREFLIGHT_TIMEOUT_S" "file:$scratch/backend.txt" \
  "$PYTHON" -c 'import jax; print(jax.default_backend(), jax.devices()[0].device_kind,
jax.__version__, sep="\t")' || { cat "$scratch/backend.txt"; exit 1; }
IFS=$'\t' read -r backend device_kind jax_version < <(tail -n 1 "$scratch/backend.txt")
echo "JAX $jax_version: backend $backend, device '$device_kind'"
if [ "$dry_run" = 0 ] && [ "$backend" != gpu ] && [ "$backend" != tpu ]; then
  echo "no accelerator: JAX's backend is $backend; use --dry-run" >&2
  exit 3
fi

# --- MFU peaks: given, or the Hopper SXM ones on an H100/H200, else none (no MFU column).
if [ -z "$peaks" ]; then
  case "$device_kind" in
    *H100*|*H200*) peaks="$HOPPER_SXM_PEAKS" ;;
    *) if [ "$dry_run" = 1 ]; then peaks="$HOPPER_SXM_PEAKS"; else
         echo "note: no --peak-tflops for '$device_kind': the benchmark gives no MFU"; fi ;;
  esac
fi
device_slug=$(echo "$device_kind" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' \
  | sed 's/^-*//; s/-*$//')
today=$(date +%Y-%m-%d)
if [ "$dry_run" = 1 ]; then
  results="$scratch/results/accelerator_${today}_${device_slug}"
else
  results="experiments/results/accelerator_${today}_${device_slug}"
fi
echo "peaks: ${peaks:-none}; results: $results.{md,json}"

# bench_args OUTPUT DTYPE [more benchmark flags...]: sets BENCH, the benchmark command
# of one dtype.
bench_args() {
  local output="$1" dtype="$2"
  shift 2
  BENCH=("$PYTHON" -m inception_jax benchmark --compare torchvision --torch-modes "$torch_modes"
         --ops xla --dtypes "$dtype" --output "$output" "$@")
  if [ -n "$peaks" ]; then BENCH+=(--peak-tflops "$peaks"); fi
}

# One report (OUT.md, OUT.json) of the per-dtype reports: argv OUT PART...
MERGE_PY='
import json, pathlib, sys
from inception_jax import benchmark
out = pathlib.Path(sys.argv[1])
parts = [p for p in sys.argv[2:] if pathlib.Path(p + ".json").exists()]
if not parts:
  sys.exit("no benchmark results to merge")
reports = [json.loads(pathlib.Path(p + ".json").read_text()) for p in parts]
report = dict(reports[0])
for key in ("results", "ratios"):
  report[key] = [row for r in reports for row in r[key]]
for key in ("ceilings", "peak_tflops"):
  report[key] = {k: v for r in reports for k, v in (r.get(key) or {}).items()}
out.parent.mkdir(parents=True, exist_ok=True)
out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
out.with_suffix(".md").write_text(benchmark.format_markdown(report) + "\n")
rows, md, js = len(report["results"]), out.with_suffix(".md"), out.with_suffix(".json")
print(f"merged {len(parts)} report(s), {rows} rows into {md} and {js}")
'

if [ "$dry_run" = 1 ]; then
  # --- The dry run: everything but the accelerator.
  run_step "parse: train --help" "$DRY_TIMEOUT_S" "file:$scratch/help_train.txt" \
    "$PYTHON" -m inception_jax train --help || fail "train --help"
  run_step "parse: the default config, the benchmark's cases and peaks" "$DRY_TIMEOUT_S" - \
    "$PYTHON" -c '
import sys
from inception_jax import benchmark, config
config.load("default", [])
cases = benchmark.parse_cases(sys.argv[1], ["googlenet_bn"], sys.argv[2].split())
print(len(cases), "cases; peaks", benchmark.parse_peaks(sys.argv[3]))
' "$BENCH_CASES" "$BENCH_DTYPES" "$peaks" || fail "config, cases or peaks"
  tests_log="$scratch/tests.log"
  if run_step "accelerator tests collect and skip on CPU" "$DRY_TIMEOUT_S" "file:$tests_log" \
      "$PYTHON" -m pytest -q -n 0 -p no:cacheprovider -m accelerator tests/test_accelerator.py; then
    summary=$(tail -n 1 "$tests_log")
    echo "pytest: $summary"
    if ! echo "$summary" | grep -Eq '^[0-9]+ skipped' \
        || echo "$summary" | grep -Eq 'passed|failed|error'; then
      cat "$tests_log"; echo "expected every accelerator test to be skipped on CPU"
      fail "accelerator tests not all skipped"
    fi
  else
    cat "$tests_log"; fail "accelerator tests on CPU"
  fi
  # The benchmark command with the real run's flags (so they parse), on a tiny model,
  # one dtype and one small case: a CPU has no time for more (~70 s on 2 cores).
  part="$scratch/bench_float32"
  parts=("$part")
  bench_args "$part" float32 --models googlenet_bn_shallow --cases infer:2:32 \
    --repeats 1 --warmup 0 --lead-in 0 --fast-compile
  run_step "benchmark pipeline on CPU, tiny model" "$DRY_TIMEOUT_S" "file:$part.log" \
    "${BENCH[@]}" || { tail -n 20 "$part.log"; fail "benchmark"; }
  run_step "merge the benchmark reports" "$DRY_TIMEOUT_S" - \
    "$PYTHON" -c "$MERGE_PY" "$results" "${parts[@]}" || fail "merge"
  echo "on an accelerator it would run:"
  echo "  $PYTHON -m pytest -q -n 0 -p no:cacheprovider -m accelerator tests/test_accelerator.py"
  echo "  $PYTHON -m inception_jax train --workdir <tmp>  (default config; top-1 >= $MIN_TOP1)"
  for dtype in $BENCH_DTYPES; do
    bench_args "<tmp>/bench_$dtype" "$dtype" --models googlenet_bn --cases "$BENCH_CASES"
    echo "  ${BENCH[*]}"
  done
  echo "  merged into experiments/results/accelerator_<date>_<device>.{md,json}"
else
  # --- On the accelerator.
  tests_log="$scratch/tests.log"
  if run_step "accelerator tests" "$TESTS_TIMEOUT_S" "tee:$tests_log" \
      "$PYTHON" -m pytest -q -n 0 -p no:cacheprovider -m accelerator tests/test_accelerator.py; then
    if tail -n 1 "$tests_log" | grep -q skipped; then
      echo "some accelerator tests were skipped on an accelerator"; fail "tests skipped"
    fi
  else
    fail "accelerator tests"
  fi

  train_log="$scratch/train.log"
  if run_step "train the default config" "$TRAIN_TIMEOUT_S" "tee:$train_log" \
      "$PYTHON" -m inception_jax train --workdir "$scratch/train"; then
    top1=$(grep -E '^eval at step' "$train_log" | tail -n 1 | sed -E 's/.*top1 ([0-9.]+).*/\1/')
    if [ -z "$top1" ] || ! awk -v t="$top1" -v m="$MIN_TOP1" 'BEGIN { exit !(t >= m) }'; then
      echo "final test top-1 ${top1:-missing} is below $MIN_TOP1"; fail "training top-1"
    else
      echo "final test top-1 $top1 (>= $MIN_TOP1)"
    fi
  else
    fail "training"
  fi

  parts=()
  for dtype in $BENCH_DTYPES; do
    left=$((TOTAL_BUDGET_S - SECONDS - 20))  # 20 s kept for the merge
    if [ "$left" -lt "$BENCH_MIN_S" ]; then
      echo "benchmark $dtype left out: ${left} s of the ${TOTAL_BUDGET_S} s budget left"
      fail "benchmark $dtype (no time left)"
      continue
    fi
    part="$scratch/bench_$dtype"
    bench_args "$part" "$dtype" --models googlenet_bn --cases "$BENCH_CASES"
    run_step "benchmark $dtype vs torchvision" "$left" - "${BENCH[@]}" || fail "benchmark $dtype"
    parts+=("$part")
  done
  if [ ${#parts[@]} -gt 0 ]; then
    run_step "merge the benchmark reports" 15 - \
      "$PYTHON" -c "$MERGE_PY" "$results" "${parts[@]}" || fail "merge"
  fi
fi

echo "total ${SECONDS} s"
if [ ${#failures[@]} -gt 0 ]; then
  echo "FAILED: ${failures[*]}"
  exit 1
fi
echo "all steps passed"
