#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (see benchmarks/RESULTS.md for what it gave).
#
#   tools/device_check.sh --quick     < 7 minutes by construction (the budgets below add up to 400 s):
#                                     build for sm_90, every op once under CUDA_LAUNCH_BLOCKING=1, the
#                                     CUDA cases of the op tests, compute-sanitizer memcheck (if present),
#                                     a calibration benchmark of four conv layers, a short bench_train
#   tools/device_check.sh --full      the rest, as a second call (< 9.5 minutes; the build is incremental
#                                     when it follows --quick on the same machine): the whole suite on
#                                     cuda:0, racecheck, NCCL (if installed), every conv layer, every model
#   tools/device_check.sh --dry-run [--quick|--full]   print the plan and the budgets, run nothing
#
# Every step runs under `timeout` with its own budget (seconds), so a hung kernel or a slow benchmark
# costs at most its budget and the later steps still run. The log goes to $OUT as it is written (or to
# ./device_check_out when OUT is unset): $OUT/check.log (every step's output, in order),
# $OUT/summary.txt (rewritten after each step), and the JSON/XML the steps write -- at most 8 files.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=quick
DRY=0
for a in "$@"; do
  case $a in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $a (use --quick, --full, --dry-run)" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-$PWD/device_check_out}
export CUDAARCHS=${CUDAARCHS:-90}
export PYTHONUNBUFFERED=1
KILL_GRACE=2     # seconds `timeout` waits after SIGTERM before SIGKILL
LIMIT_QUICK=420  # the --quick promise: 7 minutes
LIMIT_FULL=570   # the --full promise: inside one 10-minute device call, with room for its start
OP_TESTS="tests/test_elementwise.py tests/test_fc.py tests/test_conv.py tests/test_lrn.py tests/test_pool.py tests/test_tensor.py tests/test_upload.py tests/test_errors.py"
CAL_LAYERS=2012.conv1,2012.conv2,2012.conv3,owt.conv4   # stride-4 C=3, 5x5 grouped, two 3x3 shapes

# The plan: name | budget (s) | command (run by bash -c from the repository root).
PLAN_QUICK=(
  "gpu|10|nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; git rev-parse --short HEAD 2>/dev/null || true"
  "build|150|python3 -c 'import pybind11, scikit_build_core, numpy' && CONVNET_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -q . && python3 -c 'import convnet; i = convnet.build_info(); print(i); assert i[\"cuda\"] and i[\"cuda_devices\"] > 0, \"no CUDA device seen\"'"
  "ops_once|20|CUDA_LAUNCH_BLOCKING=1 CONVNET_SYNC=1 python3 tools/sanitizer_case.py"
  "cuda_tests|90|CONVNET_SKIP_EMULATOR=1 CONVNET_TEST_DEVICES=cuda:0 python3 -m pytest -q --maxfail=10 -p no:cacheprovider -m 'not slow' --junitxml=\"\$OUT/junit_quick.xml\" $OP_TESTS"
  "memcheck|50|if command -v compute-sanitizer >/dev/null; then compute-sanitizer --tool memcheck --error-exitcode 9 python3 tools/sanitizer_case.py; else echo 'compute-sanitizer not found: memcheck not run'; fi"
  "calibrate|40|python3 benchmarks/bench_conv.py --device cuda:0 --layers $CAL_LAYERS --repeat 3 --iters 2 --warmup 1 --json \"\$OUT/bench_conv_calibrate.json\""
  "bench_train|40|python3 benchmarks/bench_train.py --device cuda:0 --models owt --steps 5 --warmup 2 --no-torch --json \"\$OUT/bench_train_quick.json\""
)
PLAN_FULL=(
  "gpu|10|nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader; git rev-parse --short HEAD 2>/dev/null || true"
  "build|150|CONVNET_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -q . && python3 -c 'import convnet; print(convnet.build_info())'"
  "tests|150|CONVNET_SKIP_EMULATOR=1 CONVNET_TEST_DEVICES=cpu,cuda:0 python3 -m pytest -q --maxfail=20 -p no:cacheprovider -m 'not slow' --junitxml=\"\$OUT/junit_full.xml\" tests/"
  "racecheck|45|if command -v compute-sanitizer >/dev/null; then compute-sanitizer --tool racecheck --error-exitcode 9 python3 tools/sanitizer_case.py; else echo 'compute-sanitizer not found: racecheck not run'; fi"
  "nccl|30|if python3 -c 'import nvidia.nccl' 2>/dev/null; then python3 tools/nccl_check.py && python3 tools/dp_nccl_check.py; else echo 'nvidia-nccl-cu13 not installed: NCCL checks not run'; fi"
  "bench_conv|90|python3 benchmarks/bench_conv.py --device cuda:0 --repeat 3 --iters 2 --warmup 1 --json \"\$OUT/bench_conv.json\""
  "bench_train|80|python3 benchmarks/bench_train.py --device cuda:0 --steps 10 --warmup 2 --json \"\$OUT/bench_train.json\""
)
if [ "$MODE" = quick ]; then PLAN=("${PLAN_QUICK[@]}"); LIMIT=$LIMIT_QUICK; else PLAN=("${PLAN_FULL[@]}"); LIMIT=$LIMIT_FULL; fi

# By construction: the budgets plus each step's kill grace stay under the mode's limit.
TOTAL=0
for s in "${PLAN[@]}"; do
  b=$(echo "$s" | cut -d'|' -f2)
  TOTAL=$((TOTAL + b + KILL_GRACE))
done
if [ "$TOTAL" -gt "$LIMIT" ]; then
  echo "device_check.sh: the $MODE plan's budgets add up to $TOTAL s, over its $LIMIT s limit" >&2
  exit 2
fi

if [ "$DRY" = 1 ]; then
  echo "device_check.sh --$MODE: plan (budget s, command); worst case $TOTAL s of $LIMIT s; logs to $OUT"
  for s in "${PLAN[@]}"; do
    IFS='|' read -r name budget cmd <<<"$s"
    printf '  %-12s %4d s  %s\n' "$name" "$budget" "$cmd"
  done
  exit 0
fi

mkdir -p "$OUT"
export OUT
LOG=$OUT/check.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
echo "device_check.sh --$MODE ($(date -u +%FT%TZ)): worst case $TOTAL s of $LIMIT s" | tee "$SUMMARY"
T_START=$SECONDS
failed=0
for s in "${PLAN[@]}"; do
  IFS='|' read -r name budget cmd <<<"$s"
  echo "=== $name (budget $budget s): $cmd" | tee -a "$LOG"
  t0=$SECONDS
  timeout -k "$KILL_GRACE" "$budget" bash -c "$cmd" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$((SECONDS - t0))
  case $rc in
    0) verdict=ok ;;
    124 | 137) verdict="TIMEOUT after $budget s" ;;
    *) verdict="FAILED rc=$rc" ;;
  esac
  [ "$rc" = 0 ] || failed=1
  printf '%-12s %-22s %4d s of %4d s\n' "$name" "$verdict" "$dt" "$budget" | tee -a "$SUMMARY" "$LOG"
  if [ "$name" = build ] && [ "$rc" != 0 ]; then
    echo "build failed: the later steps need it; see $LOG" | tee -a "$SUMMARY"
    break
  fi
done
echo "total $((SECONDS - T_START)) s (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))" | tee -a "$SUMMARY"
grep -hE "ERROR SUMMARY|passed|failed" "$LOG" | tail -n 5 | tee -a "$SUMMARY"
exit $failed
