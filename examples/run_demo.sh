#!/usr/bin/env bash
# The main job of b2s, end to end on the built-in synthetic world, on CPU with the tiny preset:
#   synth -> build-binary -> convert -> pretrain -> finetune (online + offboard) -> evaluate
#   -> autolabel -> visualize
# Everything goes to $OUT (default demo_out/); a finished step is not redone when the script is
# run again (delete $OUT to start over). About 14 minutes on 2 CPU cores; every step prints its
# wall time and the last screen shows the scores on the held-out scene against the demo's targets.
# The training lengths and settings were chosen from learning curves on scenes of their own
# (examples/demo_curves.py, docs/demo.md), never on the held-out scene.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${B2S_SKIP_INSTALL:-0}" = "1" ] || bash examples/install.sh

OUT=${OUT:-demo_out}
# Training lengths: about 1, 3 and 2 s a step on 2 cores; docs/demo.md has the curves they come from.
PRETRAIN_STEPS=${PRETRAIN_STEPS:-200}   # binary pre-training: cheap steps (no semantic head)
FINETUNE_STEPS=${FINETUNE_STEPS:-150}   # S+B fine-tuning: one semantic and one binary batch a step
OFFBOARD_STEPS=${OFFBOARD_STEPS:-100}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
: > "$OUT/step_times.tsv"
STEP_NAME=""
STEP_START=0
finish_step() {
    if [ -n "$STEP_NAME" ]; then
        local seconds
        seconds=$(awk -v a="$STEP_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        printf '   \033[2m(%s s)\033[0m\n' "$seconds"
        printf '%s\t%s\n' "$STEP_NAME" "$seconds" >> "$OUT/step_times.tsv"
    fi
}
step() {
    finish_step
    STEP_NAME="$*"
    STEP_START=$(date +%s.%N)
    printf '\n\033[1m== %s\033[0m\n' "$*"
}
# Every training run: the tiny preset, batch 2, lr 1e-3, the camera mask (Occ3D's visible voxels),
# a class-weighted focal loss (count^-0.5: short runs otherwise learn the ground classes only) and
# the LiDAR depth loss of the paper's code base on frames that carry LiDAR points (the default).
TRAIN="--batch-size 2 --lr 1e-3 --device cpu --workers 0 --camera-mask --epochs 1000"

# 1. Two synthetic worlds written in the real on-disk formats: unlabelled nuPlan-style logs (the
#    cheap, large binary-only data) and a small nuScenes + Occ3D labelled set.
step "1/9 synthetic worlds"
[ -f "$OUT/logs/synth_manifest.json" ] || \
    b2s synth --scenes 4 --frames 6 --format nuplan --image-size 352x198 --seed 1 --no-preview --out "$OUT/logs"
[ -f "$OUT/labelled/synth_manifest.json" ] || \
    b2s synth --scenes 3 --frames 6 --format nuscenes,occ3d --image-size 352x198 --seed 2 --out "$OUT/labelled"

# 2. The data engine: binary occupancy + visibility masks from the LiDAR logs and boxes; the key
#    frames' LiDAR points stay in the file to supervise the depth of the image-to-3D transform.
step "2/9 build-binary (nuPlan logs -> binary occupancy)"
[ -f "$OUT/binary.h5" ] || \
    b2s build-binary --source nuplan --dataroot "$OUT/logs/nuplan" --grid occ3d --points --out "$OUT/binary.h5"

# 3. Labelled data into the same format: two scenes to train on, one held out.
step "3/9 convert (nuScenes + Occ3D labels)"
[ -f "$OUT/semantic-train.h5" ] || \
    b2s convert --source nuscenes --dataroot "$OUT/labelled/nuscenes" --version v1.0-mini \
        --labels "occ3d:$OUT/labelled/occ3d/gts" --scenes scene-0001,scene-0002 --out "$OUT/semantic-train.h5"
[ -f "$OUT/semantic-val.h5" ] || \
    b2s convert --source nuscenes --dataroot "$OUT/labelled/nuscenes" --version v1.0-mini \
        --labels "occ3d:$OUT/labelled/occ3d/gts" --scenes scene-0003 --out "$OUT/semantic-val.h5"
b2s info "$OUT/binary.h5" "$OUT/semantic-train.h5"

# 4. Stage 1: binary pre-training up to the binary decoder.
step "4/9 pretrain (binary only, $PRETRAIN_STEPS steps)"
[ -f "$OUT/runs/pretrain/checkpoint.pt" ] || \
    b2s pretrain --data "$OUT/binary.h5" --model sparse-ls --preset tiny $TRAIN --max-steps "$PRETRAIN_STEPS" \
        --out "$OUT/runs/pretrain"

# 5. Stage 2: the whole model on semantic data, the binary decoder kept trained on S + B.
step "5/9 finetune (Intermediate Head, S+B, $FINETUNE_STEPS steps)"
[ -f "$OUT/runs/finetune/checkpoint.pt" ] || \
    b2s finetune --init "$OUT/runs/pretrain/checkpoint.pt" --semantic-data "$OUT/semantic-train.h5" \
        --strategy intermediate --binary-data b --pretrain-data "$OUT/binary.h5" $TRAIN --class-balance 0.5 \
        --max-steps "$FINETUNE_STEPS" --out "$OUT/runs/finetune"

# 6. The offboard auto-labeller: the same architecture with the GT binary grid as its input.
step "6/9 offboard model (GT binary as input, $OFFBOARD_STEPS steps)"
[ -f "$OUT/runs/offboard/checkpoint.pt" ] || \
    b2s finetune --offboard --model sparse-ls --preset tiny --semantic-data "$OUT/semantic-train.h5" \
        $TRAIN --class-balance 0.5 --max-steps "$OFFBOARD_STEPS" --out "$OUT/runs/offboard"

# 7. Scores on the held-out scene (Occ3D protocol, camera mask, RayIoU); rerun every time, so the
#    scores of a rerun replace the last ones (--overwrite).
step "7/9 evaluate on the held-out scene"
b2s evaluate --checkpoint "$OUT/runs/finetune/checkpoint.pt" --data "$OUT/semantic-val.h5" \
    --predictions-out "$OUT/predictions.h5" --ray-step 4 --out "$OUT/evaluation.json" --overwrite
b2s evaluate --checkpoint "$OUT/runs/offboard/checkpoint.pt" --data "$OUT/semantic-val.h5" \
    --predictions-out "$OUT/predictions-offboard.h5" --ray-step 4 --out "$OUT/evaluation-offboard.json" --overwrite

# 8. Pseudo-labels for the binary-only logs from the offboard model (the paper's Top2 form).
step "8/9 autolabel (Top-2)"
[ -f "$OUT/pseudo-labels.h5" ] || \
    b2s autolabel --checkpoint "$OUT/runs/offboard/checkpoint.pt" --data "$OUT/binary.h5" --top2 --out "$OUT/pseudo-labels.h5"

# 9. Pictures: GT | prediction | binary decoder, camera overlays, an animation, an HTML viewer;
#    drawn inside the camera mask, the voxels the scores count; the pseudo-labels' second choice
#    and margin; the learning curves of the training runs.
step "9/9 visualize"
b2s visualize scene-0003 --data "$OUT/semantic-val.h5" --predictions "$OUT/predictions.h5" --frame 2 --mask camera --html \
    --out "$OUT/pictures" --overwrite
b2s visualize scene-0003 --data "$OUT/semantic-val.h5" --predictions "$OUT/predictions-offboard.h5" --frame 2 --mask camera \
    --out "$OUT/pictures-offboard" --overwrite
# The Top-2 pseudo-labels of one binary scene: first | second choice | logit margin (and the binary grid they
# label). b2s makes one scene per nuPlan scene row, and a synthetic log of 6 key frames holds 5 of them
# (docs/synth.md): scene-0001-000 is the log's first, with key frames 0 and 1.
b2s visualize scene-0001-000 --data "$OUT/binary.h5" --predictions "$OUT/pseudo-labels.h5" --frame 1 --mask camera --no-3d \
    --no-cameras --out "$OUT/pictures-pseudo-labels" --overwrite
# Learning curves of the three runs: loss and learning rate (they train without --val-data: the
# held-out scene is only scored at the end, by step 7).
b2s curves "$OUT/runs/pretrain" "$OUT/runs/finetune" "$OUT/runs/offboard" --title "demo training runs" \
    --out "$OUT/pictures/training_curves.png" --overwrite
finish_step

printf '\n\033[1m== done\033[0m\n'
python3 examples/demo_summary.py "$OUT"
echo "scores:        $OUT/evaluation.json, $OUT/evaluation-offboard.json"
echo "pseudo-labels: $OUT/pseudo-labels.h5"
echo "pictures:"
ls -1 "$OUT"/pictures/* "$OUT"/pictures-offboard/* "$OUT"/pictures-pseudo-labels/* | sed 's/^/  /'
