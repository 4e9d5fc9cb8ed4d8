#!/usr/bin/env bash
# The baseline comparison of docs/results/baselines.md: every objective pretrained for the same budget on the same
# real pairs (the prepared COVID-19 image data collection), then the same linear probe and retrieval on Kermany
# pneumonia. Sized for a 2-core CPU: 64-px views, batch 8, the offline MiniLM text tower where a text encoder is used.
#
#   bash docs/results/baselines-run.sh                      # table A: ResNet18 from random init, 24 steps
#   RUNS=/work/runs/baselines-imagenet ENCODER=mobilenet_v2 WEIGHTS=builtin:imagenet STEPS=240 EVERY=60 \
#     PROBE=--standardize bash docs/results/baselines-run.sh  # table B: ImageNet MobileNetV2, 240 steps
set -euo pipefail
DATA=${DATA:-/work/runs/covid-data}          # convirt prepare covid-chestxray --input ../shared/data/covid-chestxray --output $DATA
RUNS=${RUNS:-/work/runs/baselines}
KERMANY=${KERMANY:-/work/shared/data/kermany-pneumonia}
SUBSET=${SUBSET:-/work/runs/baselines/kermany-small}
ENCODER=${ENCODER:-resnet18}
WEIGHTS=${WEIGHTS:-none}
STEPS=${STEPS:-24}
EVERY=${EVERY:-12}
PROBE=${PROBE:-}                              # extra `convirt evaluate classify` flags (e.g. --standardize)
COMMON="model.image_encoder=$ENCODER model.image_weights=$WEIGHTS model.text_encoder=builtin:minilm model.freeze_layers=3
  data.manifest=$DATA/manifest.csv data.batch_size=8 data.num_workers=0 data.augment.output_size=64 data.max_val_pairs=16
  data.augment.blur_kernel_size=9 train.val_every_steps=$EVERY train.max_evals=$((STEPS / EVERY))
  train.checkpoint_every_steps=$EVERY train.precision=32 train.progress_bar=false train.tensorboard=false
  train.log_every_steps=5 train.resume=never"
OBJECTIVES=(convirt contrastive_binary simclr moco_v2 caption_lstm caption_transformer)
convirt pretrain --config configs/covid-smoke.yaml $COMMON train.output_dir=$RUNS/convirt
convirt pretrain --config configs/baselines/contrastive_binary.yaml $COMMON train.output_dir=$RUNS/contrastive_binary
convirt pretrain --config configs/baselines/simclr.yaml $COMMON train.output_dir=$RUNS/simclr
# queue 128 < the 389 training images (a 4096 queue would hold every image's key ~10 times)
convirt pretrain --config configs/baselines/moco_v2.yaml $COMMON train.output_dir=$RUNS/moco_v2 objective_params.queue_size=128
# a small corpus: words seen 3 times, reports cut to 60 words
convirt pretrain --config configs/baselines/caption_lstm.yaml $COMMON train.output_dir=$RUNS/caption_lstm \
  objective_params.min_count=3 objective_params.max_words=60
convirt pretrain --config configs/baselines/caption_transformer.yaml $COMMON train.output_dir=$RUNS/caption_transformer \
  objective_params.min_count=3 objective_params.max_words=60

# Evaluation on a CPU-sized Kermany subset: 600 random training images (seed 0) + the full 624-image test set,
# pre-decoded at 128 px (feature extraction from the full-size JPEGs ran at ~6 images/s on the shared CPU).
[ -d "$SUBSET" ] || python docs/results/baselines-kermany-subset.py "$KERMANY" "$SUBSET"
ENCODERS=(--encoder "random:$ENCODER" --name random)
RETRIEVAL=(--encoder "random:$ENCODER" --label random)
if [ "$WEIGHTS" != none ]; then  # the weights every objective started from, before any pretraining step
  INIT=$WEIGHTS
  if [ "$WEIGHTS" = builtin:imagenet ]; then
    INIT=$(python -c "import sys; from convirt.models.image import offline_imagenet_file as f; print(f(sys.argv[1]))" \
      "$ENCODER")
  fi
  ENCODERS+=(--encoder "$ENCODER=$INIT" --name imagenet)
  RETRIEVAL+=(--encoder "$ENCODER=$INIT" --label imagenet)
fi
for o in "${OBJECTIVES[@]}"; do
  ENCODERS+=(--encoder "$RUNS/$o/checkpoints/best.ckpt" --name "$o")
  RETRIEVAL+=(--encoder "$RUNS/$o/checkpoints/best.ckpt" --label "$o")
done
# fractions of the 540-image training split (10 % = 54 labelled images, 100 % = 540; ~1 % and ~10 % of Kermany)
convirt evaluate classify --dataset "imagefolder:$SUBSET" "${ENCODERS[@]}" --protocol linear \
  --fractions 0.1,1 --seeds 3 --image-size 64 --threads 2 $PROBE --output "$RUNS/classify-kermany"
# image-image retrieval (h_v) on the test split. Every checkpoint goes in as it is (other objectives: image encoder
# only; ConVIRT also ranks the official text queries).
convirt evaluate retrieval --dataset "$SUBSET" --split test \
  --prompts /work/shared/data/convirt-retrieval/text_query.csv --prompt-map "NORMAL=No Finding" \
  --prompt-map PNEUMONIA=Pneumonia "${RETRIEVAL[@]}" --image-size 64 --space h_v --output "$RUNS/retrieval-kermany"
