#!/usr/bin/env bash
# The main job of b2s, end to end on the built-in synthetic world, on CPU with the tiny preset:
#   synth -> build-binary -> convert -> pretrain -> finetune (online + offboard) -> evaluate
#   -> autolabel -> visualize
# Everything goes to $OUT (default demo_out/); a finished step is not redone when the script is
# run again (delete $OUT to start over). About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${B2S_SKIP_INSTALL:-0}" = "1" ] || bash examples/install.sh

OUT=${OUT:-demo_out}
EPOCHS=${EPOCHS:-3}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# 1. Two synthetic worlds written in the real on-disk formats: unlabelled nuPlan-style logs (the
#    cheap, large binary-only data) and a small nuScenes + Occ3D labelled set.
step "1/8 synthetic worlds"
[ -f "$OUT/logs/synth_manifest.json" ] || \
    b2s synth --scenes 4 --frames 6 --format nuplan --image-size 352x198 --seed 1 --no-preview --out "$OUT/logs"
[ -f "$OUT/labelled/synth_manifest.json" ] || \
    b2s synth --scenes 3 --frames 6 --format nuscenes,occ3d --image-size 352x198 --seed 2 --out "$OUT/labelled"

# 2. The data engine: binary occupancy + visibility masks from the LiDAR logs and boxes.
step "2/8 build-binary (nuPlan logs -> binary occupancy)"
[ -f "$OUT/binary.h5" ] || \
    b2s build-binary --source nuplan --dataroot "$OUT/logs/nuplan" --grid occ3d --out "$OUT/binary.h5"

# 3. Labelled data into the same format: two scenes to train on, one held out.
step "3/8 convert (nuScenes + Occ3D labels)"
[ -f "$OUT/semantic-train.h5" ] || \
    b2s convert --source nuscenes --dataroot "$OUT/labelled/nuscenes" --version v1.0-mini \
        --labels "occ3d:$OUT/labelled/occ3d/gts" --scenes scene-0001,scene-0002 --out "$OUT/semantic-train.h5"
[ -f "$OUT/semantic-val.h5" ] || \
    b2s convert --source nuscenes --dataroot "$OUT/labelled/nuscenes" --version v1.0-mini \
        --labels "occ3d:$OUT/labelled/occ3d/gts" --scenes scene-0003 --out "$OUT/semantic-val.h5"
b2s info "$OUT/binary.h5" "$OUT/semantic-train.h5"

# 4. Stage 1: binary pre-training up to the binary decoder.
step "4/8 pretrain (binary only)"
[ -f "$OUT/runs/pretrain/checkpoint.pt" ] || \
    b2s pretrain --data "$OUT/binary.h5" --model sparse-ls --preset tiny --epochs "$EPOCHS" --batch-size 2 \
        --device cpu --workers 0 --out "$OUT/runs/pretrain"

# 5. Stage 2: the whole model on semantic data, the binary decoder kept trained on S + B.
step "5/8 finetune (Intermediate Head, S+B) and the offboard auto-labeller"
[ -f "$OUT/runs/finetune/checkpoint.pt" ] || \
    b2s finetune --init "$OUT/runs/pretrain/checkpoint.pt" --semantic-data "$OUT/semantic-train.h5" \
        --strategy intermediate --binary-data b --pretrain-data "$OUT/binary.h5" \
        --epochs "$EPOCHS" --batch-size 2 --device cpu --workers 0 --out "$OUT/runs/finetune"
[ -f "$OUT/runs/offboard/checkpoint.pt" ] || \
    b2s finetune --offboard --model sparse-ls --preset tiny --semantic-data "$OUT/semantic-train.h5" \
        --epochs "$EPOCHS" --batch-size 2 --device cpu --workers 0 --out "$OUT/runs/offboard"

# 6. Scores on the held-out scene (Occ3D protocol, camera mask, RayIoU).
step "6/8 evaluate"
b2s evaluate --checkpoint "$OUT/runs/finetune/checkpoint.pt" --data "$OUT/semantic-val.h5" \
    --predictions-out "$OUT/predictions.h5" --ray-step 4 --out "$OUT/evaluation.json"
b2s evaluate --checkpoint "$OUT/runs/offboard/checkpoint.pt" --data "$OUT/semantic-val.h5" \
    --predictions-out "$OUT/predictions-offboard.h5" --ray-step 4 --out "$OUT/evaluation-offboard.json"

# 7. Pseudo-labels for the binary-only logs from the offboard model.
step "7/8 autolabel (Top-2)"
[ -f "$OUT/pseudo-labels.h5" ] || \
    b2s autolabel --checkpoint "$OUT/runs/offboard/checkpoint.pt" --data "$OUT/binary.h5" --top2 --out "$OUT/pseudo-labels.h5"

# 8. Pictures: GT | prediction | binary decoder, camera overlays, an animation, an HTML viewer.
step "8/8 visualize"
b2s visualize scene-0003 --data "$OUT/semantic-val.h5" --pred "$OUT/predictions.h5" --frame 2 --html --out "$OUT/pictures"

step "done: scores on the held-out scene (Occ3D protocol, camera mask)"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from rich.console import Console
from rich.table import Table
out = Path(sys.argv[1])
table = Table()
for column in ("model", "mIoU", "geometry IoU", "binary-decoder IoU", "RayIoU"):
    table.add_column(column, justify="right" if column != "model" else "left")
for name, path in (("Sparse-LS online (pretrain + finetune S+B)", "evaluation.json"),
                   ("Sparse-LS offboard (GT binary as input)", "evaluation-offboard.json")):
    scores = json.loads((out / path).read_text())
    cell = lambda key: "-" if scores.get(key) is None else f"{scores[key]:.2f}"
    table.add_row(name, cell("miou"), cell("geometry_iou"), cell("binary_iou"), cell("rayiou"))
Console().print(table)
PY
echo "(tiny preset, $EPOCHS epochs on 2 scenes: a check of the pipeline, not of the method; see docs/results.md)"
echo "scores:        $OUT/evaluation.json, $OUT/evaluation-offboard.json"
echo "pseudo-labels: $OUT/pseudo-labels.h5"
echo "pictures:"
ls -1 "$OUT"/pictures/* | sed 's/^/  /'
