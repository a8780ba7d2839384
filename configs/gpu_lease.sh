#!/usr/bin/env bash
# Run 27 in one call of the device tool (at most 10 minutes; a task is lent 15 minutes of device time in
# all, so there is no second call). Here, once, fetch the wheels the GPU machine lacks (python 3.12):
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl segment-anything==1.0 zarr==3.1.6 numcodecs==0.16.6 \
#     donfig==0.8.1.post1 google-crc32c==1.9.0 pooch==1.9.0 platformdirs==4.14.9
# (pooch: scikit-image's data module imports it, for the coins of the evaluation)
# then: run(command="bash configs/gpu_lease.sh", carry=[".whl"], timeout_s=600), and give_back.
# It writes to $OUT: gpu.txt, step_cost.txt (a step's time with the episodes on the GPU; on the host too
# if those fail, and then it trains with the host's),
# train.log, log.jsonl and v27.pt (the weights, the refiner carried), within TRAIN_MIN + about 1.5
# minutes. Device time is what a task lacks: evaluate v27.pt afterwards, here, with
# `python -m promptseg.train.evaluate v27.pt configs/default_v27_gpu.toml --workers 2`, or set EVAL=1 to
# run that on the GPU machine's CPU cores too (evaluate_v27.json; about 2 more minutes on 15 processes).
# Dry run on a CPU: DEVICE=cpu TRAIN_MIN=0.5 EVAL=1 EVAL_COUNTS=3,2,1 EVAL_WORKERS=2 OUT=/tmp/lease \
#   PY=.venv/bin/python bash configs/gpu_lease.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/lease}"
DEVICE="${DEVICE:-cuda}"
TRAIN_MIN="${TRAIN_MIN:-6.5}"        # training minutes (the cosine decay is fitted to them)
EVAL="${EVAL:-0}"
EVAL_WORKERS="${EVAL_WORKERS:-15}"
EVAL_COUNTS="${EVAL_COUNTS:-100,60,12}"
PY="${PY:-python3}"
mkdir -p "$OUT"
t0=$(date +%s)
if [ -d .whl ] && ! "$PY" -c "import segment_anything, zarr" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
(nvidia-smi 2>&1 || true; "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())") > "$OUT/gpu.txt"

cfg=configs/default_v27_gpu.toml
cost() { "$PY" benchmarks/train_step_cost.py "$cfg" --device "$DEVICE" --threads 4 --episodes "$1" --steps 2 \
    >> "$OUT/step_cost.txt" 2>&1; }
# the steps that fit TRAIN_MIN at the measured speed: the main process's step (device episodes) or the
# data workers' drawing of a batch, whichever is slower
step_of() { awk "/$1 episodes/{d=1} d && /the step in the main process/{print \$(NF-1); exit}" "$OUT/step_cost.txt"; }
cost device
step_s=$(step_of device)
fallback=()
if [ -z "$step_s" ]; then  # the device episodes failed on this machine: measure and train with the host's
    echo "device episodes failed (step_cost.txt): training with batched_episodes"
    cost host
    step_s=$(step_of host)
    fallback=(-e "s/^device_episodes = true/batched_episodes = true/")
fi
cat "$OUT/step_cost.txt"
draw_s=$(awk '/drawing the batch/{print $(NF-5); exit}' "$OUT/step_cost.txt")
workers=$(awk -F'= *' '/^data_workers/{print $2}' "$cfg")
steps=$("$PY" -c "print(max(20, int($TRAIN_MIN * 60 / (1.15 * max(${step_s:-10}, ${draw_s:-1} / ${workers:-1})))))")
echo "step ${step_s}s -> $steps steps in $TRAIN_MIN minutes"
run=runs/v27
rm -rf "$run"
mkdir -p "$run"
sed -e "s/^steps = .*/steps = $steps/" -e "s/^device = .*/device = \"$DEVICE\"/" ${fallback[@]+"${fallback[@]}"} "$cfg" > "$run.toml"
"$PY" -m promptseg.train.trainer "$run.toml" "$run" "$TRAIN_MIN" > "$OUT/train.log" 2>&1
tail -c 2000 "$OUT/train.log"
cp "$run/log.jsonl" "$OUT/"
cp "$run/model_last.pt" "$OUT/v27.pt" || exit 1
echo "trained: $(( $(date +%s) - t0 )) s since the start"
[ "$EVAL" = 1 ] || exit 0
"$PY" -m promptseg.train.evaluate "$run/model_last.pt" "$run.toml" --workers "$EVAL_WORKERS" --counts "$EVAL_COUNTS" \
    --json "$OUT/evaluate_v27.json" > /dev/null 2> "$OUT/evaluate.err"
rc=$?
echo "evaluated: $(( $(date +%s) - t0 )) s since the start (rc $rc)"
"$PY" - "$OUT/evaluate_v27.json" <<'PYEOF'
import json, sys
rep = json.load(open(sys.argv[1]))
for name in ("all_synthetic", "generic_2d", "medical_2d", "medical_3d", "coins"):
    for start in ("click", "box", "squiggle"):
        r = rep[name][start]
        d = r["dice"]
        print(f"{name:13s} {start:8s} Dice {d[0]:.3f} {d[2]:.3f} {d[9]:.3f} {d[20]:.3f}  NoC85 {r['noc85']:.2f}"
              f"  NoC90 {r['noc90']:.2f}  never falls {r['never_falls']}")
PYEOF
