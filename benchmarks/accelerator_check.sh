#!/usr/bin/env bash
# One command for a machine with a GPU or TPU: the device tests, the train-step,
# front-end and predict benchmarks and a short synthetic training run, all
# written into one markdown report named after the device. Accelerator time is
# lent by the minute, so every section has its own time limit and a section
# that fails or times out is reported, not fatal: the report always comes back.
#
#   bash benchmarks/accelerator_check.sh [--out DIR] [--budget_seconds N]
#   bash benchmarks/accelerator_check.sh --dry-run --out /tmp/acc   # CPU, tiny sizes (CI)
#
# Run from the repository root, with requirements.txt installed (the peers of
# bench_train_step are timed too when benchmarks/requirements.txt is installed).
set -u

DRY_RUN=0
OUT="${OUT:-benchmarks/reports}"
BUDGET=450  # seconds for all sections together: under 8 minutes with set-up
PYTHON="${PYTHON:-python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run|--dry_run) DRY_RUN=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    --budget_seconds) BUDGET="$2"; shift ;;
    --budget_seconds=*) BUDGET="${1#--budget_seconds=}" ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "accelerator_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "$OUT" || { echo "cannot create --out folder '$OUT'" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

if [ "$DRY_RUN" = 1 ]; then
  # CPU with two forced devices, every size at its smallest: checks the script
  # and the report, not the numbers.
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=2}"
  TESTS=(tests/test_prefetch.py tests/test_train.py -k "one_and_two_devices or prefetch")
  TRAIN_STEP_ARGS=(--variants=jax --rounds=1 --steps=1)
  FEATURE_ARGS=(--seconds=3 --repeats=1 --librosa_clips=1 --novariants --batch=4)
  PREDICT_ARGS=(--songs=2 --song_seconds=6 --repeats=1)
  TRAIN_OVERRIDES=(--config.debug.max_steps=3 --config.progress_bar=false)
  CONFIG=configs/tiny.py
  SECTION_LIMIT=300
  TRAIN_LIMIT=300
else
  # The accelerator itself: the tests' conftest would force the CPU otherwise.
  export JAX_PLATFORMS="${JAX_PLATFORMS:-}"
  TESTS=(-m "not slow" tests/test_train.py tests/test_prefetch.py tests/test_models.py
         tests/test_features.py -k "not one_and_two_devices")
  TRAIN_STEP_ARGS=(--rounds=3 --steps=5)
  FEATURE_ARGS=(--repeats=5)
  PREDICT_ARGS=(--songs=40 --repeats=3)
  TRAIN_OVERRIDES=(--config.progress_bar=false)
  CONFIG=configs/synthetic.py
  SECTION_LIMIT=120
  TRAIN_LIMIT=200  # configs/synthetic.py's 6 epochs: a few minutes even on a 2-core CPU
fi

DEVICE=$("$PYTHON" - <<'EOF' 2>/dev/null
import jax
d = jax.devices()
print(f'{len(d)} x {d[0].device_kind} ({d[0].platform})')
EOF
)
DEVICE="${DEVICE:-unknown (jax failed to start: see the sections below)}"
SLUG=$(echo "$DEVICE" | tr -c 'A-Za-z0-9\n' '_' | tr -s '_' | cut -c1-60)
REPORT="$OUT/accelerator_${SLUG}_$(date -u +%Y%m%d_%H%M).md"

{
  echo "# Accelerator check: $DEVICE"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- mode: $([ "$DRY_RUN" = 1 ] && echo 'dry run (CPU, tiny sizes: the numbers mean nothing)' || echo 'full')"
  echo "- host: $(nproc) CPU cores, $(uname -m), python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
  echo "- jax: $("$PYTHON" -c 'import jax, jaxlib; print(jax.__version__, "/ jaxlib", jaxlib.__version__)' 2>&1 | tail -1)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
  fi
  echo
  echo "| section | status | seconds |"
  echo "|---|---|---|"
} > "$WORK/head.md"
: > "$WORK/body.md"
FAILED=0

# section NAME COMMAND...: runs COMMAND within the section limit (LIMIT=N before
# the call sets its own) and what is left of the budget; appends the output's
# tail to the report and a row to the table.
section() {
  local name="$1"; shift
  local now left limit status t0 t1 cap="${LIMIT:-$SECTION_LIMIT}"
  now=$(date +%s); left=$((BUDGET - (now - START)))
  limit=$(( left < cap ? left : cap ))
  if [ "$limit" -le 5 ]; then
    echo "| $name | skipped: budget spent | 0 |" >> "$WORK/head.md"; FAILED=1; return
  fi
  echo "== $name (limit ${limit}s)" >&2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/section.log" 2>&1
  status=$?
  t1=$(date +%s)
  case $status in
    0) status=ok ;;
    124|137) status="TIMED OUT after ${limit}s"; FAILED=1 ;;
    *) status="FAILED (exit $status)"; FAILED=1 ;;
  esac
  echo "| $name | $status | $((t1 - t0)) |" >> "$WORK/head.md"
  {
    echo
    echo "## $name"
    echo
    echo "\`$*\` - $status"
    echo
    echo '```'
    grep -v -E 'UserWarning|warnings.warn|^\s*$' "$WORK/section.log" | tail -n 40
    echo '```'
  } >> "$WORK/body.md"
}

section "device tests" "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
section "train step (bench_train_step.py)" "$PYTHON" benchmarks/bench_train_step.py "${TRAIN_STEP_ARGS[@]}"
section "log-mel front end (bench_features.py)" "$PYTHON" benchmarks/bench_features.py "${FEATURE_ARGS[@]}"
section "predict throughput (bench_predict.py)" "$PYTHON" benchmarks/bench_predict.py "${PREDICT_ARGS[@]}"
LIMIT=$TRAIN_LIMIT section "synthetic training run ($CONFIG)" "$PYTHON" main.py --config "$CONFIG" \
  --workdir "$WORK/run" "${TRAIN_OVERRIDES[@]}"
if [ -f "$WORK/run/metrics.csv" ]; then
  { echo; echo "### metrics.csv of the training run"; echo; echo '```';
    cat "$WORK/run/metrics.csv"; echo '```'; } >> "$WORK/body.md"
fi

{
  cat "$WORK/head.md"
  echo
  echo "Total: $(( $(date +%s) - START )) s."
  cat "$WORK/body.md"
} > "$REPORT"
echo "$REPORT"
exit $FAILED
