#!/usr/bin/env bash
# OpenNMT-tf 2.32 reference training speed on the bundled corpus.
# Usage: bench/opennmt_reference/measure.sh [STEPS] [REPORT] [SKIP]
#   STEPS  training steps (default 300), REPORT  steps per window (default 25),
#   SKIP   leading windows left out of the median (default 2).
# Env: VENV (default ~/.cache/nmt/onmt-venv), WORK (default ~/.cache/nmt/onmt-work), SEED (default 1);
# the cache is $XDG_CACHE_HOME/nmt when XDG_CACHE_HOME is set.
# Prints every window, then the median source+target tokens/s and steps/s of the rest.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STEPS="${1:-300}" REPORT="${2:-25}" SKIP="${3:-2}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/nmt"
VENV="${VENV:-$CACHE/onmt-venv}" WORK="${WORK:-$CACHE/onmt-work}" SEED="${SEED:-1}"

[[ -f "$WORK/data/de.vocab" ]] || "$VENV/bin/python" "$HERE/prepare.py" --work "$WORK"

RUN="$WORK/runs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
printf 'train:\n  max_step: %d\n  save_summary_steps: %d\n' "$STEPS" "$REPORT" >"$RUN/steps.yml"
echo "run dir: $RUN (log: $RUN/train.log)"

TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" "$VENV/bin/onmt-main" \
  --config "$HERE/config.yml" "$RUN/steps.yml" --model "$HERE/model.py" \
  --data_dir "$WORK/data" --model_dir "$RUN/model" --seed "$SEED" \
  train >"$RUN/train.log" 2>&1 || { tail -30 "$RUN/train.log"; exit 1; }
rm -rf "$RUN/model"  # checkpoints are ~100 MB and not needed for a speed figure

"$VENV/bin/python" - "$RUN/train.log" "$SKIP" <<'PY'
import re
import statistics
import sys

pattern = re.compile(r"Step = (\d+) ; steps/s = ([\d.]+), tokens/s = (\d+) \(([^)]*)\)")
windows = [m.groups() for m in map(pattern.search, open(sys.argv[1])) if m]
skip = int(sys.argv[2])
for step, steps_s, tokens_s, detail in windows:
    print(f"step {int(step):5d}  {float(steps_s):5.2f} steps/s  {int(tokens_s):6d} tokens/s  ({detail})")
kept = windows[skip:]
if not kept:
    sys.exit(f"no window left after skipping {skip} of {len(windows)}")
tokens = statistics.median(int(w[2]) for w in kept)
steps = statistics.median(float(w[1]) for w in kept)
print(f"median of {len(kept)} windows (first {skip} skipped): {tokens:.0f} tokens/s, {steps:.2f} steps/s")
PY
