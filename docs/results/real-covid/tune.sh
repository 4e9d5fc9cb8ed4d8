#!/usr/bin/env bash
# One tuning try of docs/results/real-covid.md: a short pretraining with configs/covid-real.yaml plus overrides, then
# its tuning score, a linear probe scored on Kermany's VALIDATION split only (runs/real-covid/tasks/kermany-tune.csv
# from tasks.py; Kermany's test folder is never read). Run from the repository root:
#
#   bash docs/results/real-covid/tune.sh t02-lr1e-5 train.val_every_steps=25 train.max_evals=6 optim.lr=1e-5
#
# Outputs: $RUNS/tune/NAME (pretraining: logs, summary.json, checkpoints) and $RUNS/tune-probe/NAME-SIZE (summary.md,
# runs.csv). The reference rows (ImageNet and random init on the same probe) come from `tune.sh reference`;
# SIZE=224 probes at 224 px (default 128); ARCH=timm/tf_efficientnet_lite0 makes the reference rows for that
# architecture (in reference-tf_efficientnet_lite0-SIZE).
set -euo pipefail
RUNS=${RUNS:-runs/real-covid}
THREADS=${THREADS:-1}  # 1 thread per process: on a shared 2-core CPU, 2 threads spin and lose time
SIZE=${SIZE:-128}      # probe input size (the pretraining view size)
export OMP_NUM_THREADS=$THREADS
name=$1
shift
PROBE=(--dataset "manifest:$RUNS/tasks/kermany-tune.csv" --protocol linear --fractions 0.1,1 --seeds 3 --standardize
  --image-size "$SIZE" --threads "$THREADS" --cache-dir "$RUNS/tune-features")
mkdir -p "$RUNS/tune" "$RUNS/tune-probe"
if [ "$name" = reference ]; then
  ARCH=${ARCH:-mobilenet_v2}
  IMAGENET=$(python -c "from convirt.models.image import offline_imagenet_file as f; print(f('$ARCH'))")
  [ "$ARCH" = mobilenet_v2 ] && folder=reference-$SIZE || folder=reference-${ARCH##*/}-$SIZE
  convirt evaluate classify "${PROBE[@]}" --encoder "random:$ARCH" --name random \
    --encoder "$ARCH=$IMAGENET" --name imagenet --output "$RUNS/tune-probe/$folder"
  exit
fi
if [ ! -f "$RUNS/tune/$name/summary.json" ]; then
  echo "start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" > "$RUNS/tune/$name.log"
  /usr/bin/time -f "pretrain: %e s wall, %U s user, %S s sys" convirt pretrain --config configs/covid-real.yaml \
    "train.output_dir=$RUNS/tune/$name" train.resume=never "$@" >> "$RUNS/tune/$name.log" 2>&1
  echo "end $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RUNS/tune/$name.log"
fi
convirt evaluate classify "${PROBE[@]}" --encoder "$RUNS/tune/$name/checkpoints/best.ckpt" --name "$name" \
  --output "$RUNS/tune-probe/$name-$SIZE" > "$RUNS/tune-probe/$name-$SIZE.log" 2>&1
