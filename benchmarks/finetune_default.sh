#!/usr/bin/env bash
# Fine-tuning the shipped default model vs the same run from random weights, on a small set of
# another distribution (README "The default model"). Usage:
#
#   benchmarks/finetune_default.sh [OUT] [STEPS] [LR]   (default: runs/finetune 300 1e-3)
#
# Data: 800 training images and 200 test images of the generalisation split (photos, textures,
# clothing patterns, the crawling pose family and lenses that the default model never saw), made
# with two seeds so that no image is in both. Both runs use the default recipe (`fastmetro train
# default`: widths, 64 px, released augmentation, schedule, seed; lr 1e-3 unless LR is given) and
# differ only in their starting weights. Resumable: a finished run is reused. Prints both runs' evaluations.
set -euo pipefail
OUT=${1:-runs/finetune}
STEPS=${2:-300}
LR=${3:-1e-3}
FASTMETRO=${FASTMETRO:-fastmetro}
mkdir -p "$OUT"
for part in train:21:800 test:22:200; do
  IFS=: read -r name seed num <<< "$part"
  [ -f "$OUT/data_$name/test.yaml" ] || $FASTMETRO synth --split generalisation --out "$OUT/data_$name" \
      --num "$num" --size 128 --seed "$seed" --workers 2 --vertices-dtype float16 --quiet
done
for start in default scratch; do
  run="$OUT/from_$start"
  [ -f "$run/done" ] && continue
  checkpoint=$([ "$start" = default ] && echo default || echo null)
  $FASTMETRO train default "model.checkpoint=$checkpoint" "data.train=$OUT/data_train/test.yaml" \
      "data.val=$OUT/data_test/test.yaml" "train.output_dir=$run" "train.steps=$STEPS" \
      "train.eval_every=$((STEPS / 3))" "optim.lr=$LR" train.progress=false train.tensorboard=false
  touch "$run/done"
done
# Both runs' held-out evaluations, printed and in OUT/finetune.json (ship_default.py --finetune).
python3 - "$OUT" "$STEPS" "$LR" <<'PY'
import json, sys
from pathlib import Path
out, steps, lr = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
result = {"steps": steps, "lr": lr, "batch_size": 16, "train_images": 800, "test_images": 200}
for start in ("default", "scratch"):
    lines = (out / f"from_{start}" / "metrics.jsonl").read_text().splitlines()
    result[f"from_{start}"] = [json.loads(line) for line in lines if line.strip()]
    for entry in result[f"from_{start}"]:
        print(f"from {start:7s} step {entry['step']:4d}: " + ", ".join(
            f"{key} {entry[key]:.1f}" for key in ("mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe")))
(out / "finetune.json").write_text(json.dumps(result, indent=2) + "\n")
PY
