#!/usr/bin/env bash
# Every command behind docs/results/real-covid.md, from a clean clone beside ../shared (venv active: `convirt` and
# `python` on PATH). Stages run in order; pick some with STAGES="pretrain kermany-linear" (default: all).
#
#   bash docs/results/real-covid/run.sh
#
# Times on the shared 2-core development CPU are in the results page. Nothing here reads a test split before the
# recipe was fixed: tuning (docs/results/real-covid/tune.sh) scores on validation splits only.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
RUNS=${RUNS:-runs/real-covid}
DATA=${DATA:-data/covid-real}
SEEDS=${SEEDS:-0 1 2}          # pretraining seeds (train.seed)
THREADS=${THREADS:-1}          # torch threads per process (1: best on a CPU shared with other work)
SIZE=128                       # evaluation input size = the recipe's pretraining view size
STAGES=${STAGES:-prepare tasks pretrain kermany-linear kermany-finetune-1-convirt kermany-finetune-1-imagenet
  kermany-finetune-1-random kermany-finetune-10-convirt kermany-finetune-10-imagenet kermany-finetune-10-random
  covidx-like shortcut zeroshot figures}
export OMP_NUM_THREADS=$THREADS
QUERIES=(--prompts "$SHARED/convirt-retrieval/text_query.csv" --prompt-map "NORMAL=No Finding"
  --prompt-map PNEUMONIA=Pneumonia)

want() { [[ " $STAGES " == *" $1 "* ]]; }
timed() { local label=$1; shift; /usr/bin/time -f "$label: %e s wall, %U s user, %S s sys" "$@"; }

if want prepare; then  # 302 / 65 / 65 pairs (train / val / test), split by patient
  timed prepare convirt prepare covid-chestxray --input "$SHARED/covid-chestxray" --output "$DATA" \
    --val-size 0.15 --test-size 0.15 --no-progress
fi
if want tasks; then  # the Kermany tuning task (validation split only) and the COVIDx-like 3-class task
  timed tasks python docs/results/real-covid/tasks.py --shared "$SHARED" --prepared "$DATA" --out "$RUNS/tasks"
fi
if want pretrain; then
  for seed in $SEEDS; do
    timed "pretrain seed $seed" convirt pretrain --config configs/covid-real.yaml "data.manifest=$DATA/manifest.csv" \
      "train.seed=$seed" "train.output_dir=$RUNS/pretrain-seed$seed"
  done
fi

IMAGENET=$(python -c "from convirt.models.image import offline_imagenet_file as f; print(f('mobilenet_v2'))")
ENCODERS=()
for seed in $SEEDS; do
  ENCODERS+=(--encoder "$RUNS/pretrain-seed$seed/checkpoints/best.ckpt" --name "ConVIRT seed $seed")
done
IMAGENET_INIT=(--encoder "mobilenet_v2=$IMAGENET" --name "ImageNet init")
RANDOM_INIT=(--encoder random:mobilenet_v2 --name "random init")
BASELINES=("${IMAGENET_INIT[@]}" "${RANDOM_INIT[@]}")
KERMANY=(--dataset "imagefolder:$SHARED/kermany-pneumonia" --image-size $SIZE --threads "$THREADS"
  --cache-dir "$RUNS/features")

if want kermany-linear; then
  timed kermany-linear convirt evaluate classify "${KERMANY[@]}" "${ENCODERS[@]}" "${BASELINES[@]}" \
    --protocol linear --fractions 0.01,0.1,1 --seeds 5 --standardize --output "$RUNS/classify-kermany-linear"
fi
# Fine-tuning, FT_SEEDS seeds (default 3: seeds 0..FT_SEEDS-1), one command per encoder (ConVIRT = the first
# pretraining seed's encoder), so a finished command is a finished row. The 1 % runs stop by themselves (10 epochs
# without improvement); the 10 % runs are capped at 20 epochs (an epoch costs ~5x more; CPU time).
# FT_SEEDS may also be a list ("2,": seed 2 only); FT_SUFFIX is appended to the output folders (figures.py reads
# classify-kermany-finetune-P-WHO-seedN folders as more seeds of the same experiment). The committed 1 % rows were
# run as FT_SEEDS=2 (seeds 0, 1) and then FT_SEEDS=2, FT_SUFFIX=-seed2 (seed 2): the same runs as FT_SEEDS=3.
first=${SEEDS%% *}
FT_SEEDS=${FT_SEEDS:-3}
FT_SUFFIX=${FT_SUFFIX:-}
finetune() {  # finetune PERCENT WHO FLAGS...: one fine-tuning command (stage kermany-finetune-PERCENT-WHO)
  local percent=$1 who=$2
  shift 2
  want "kermany-finetune-$percent-$who" || return 0
  timed "kermany-finetune-$percent-$who$FT_SUFFIX" convirt evaluate classify "${KERMANY[@]}" "$@" \
    --protocol finetune --seeds "$FT_SEEDS" --output "$RUNS/classify-kermany-finetune-$percent-$who$FT_SUFFIX"
}
for percent in 1 10; do
  fraction=(--fractions 0.01)
  [ $percent = 10 ] && fraction=(--fractions 0.1 --max-epochs 20)
  finetune $percent convirt --encoder "$RUNS/pretrain-seed$first/checkpoints/best.ckpt" --name "ConVIRT seed $first" \
    "${fraction[@]}"
  finetune $percent imagenet "${IMAGENET_INIT[@]}" "${fraction[@]}"
  finetune $percent random "${RANDOM_INIT[@]}" "${fraction[@]}"
done
if want covidx-like; then  # lr 1e-3: the paper's COVIDx learning rate
  timed covidx-like convirt evaluate classify --dataset "manifest:$RUNS/tasks/covidx-like.csv" --image-size $SIZE \
    --threads "$THREADS" --cache-dir "$RUNS/features" "${ENCODERS[@]}" "${BASELINES[@]}" --lr 1e-3 \
    --protocol linear --fractions 0.1,1 --seeds 5 --standardize --output "$RUNS/classify-covidx-like"
fi
if want shortcut; then
  timed shortcut python docs/results/real-covid/shortcut.py "$RUNS/tasks/covidx-like.csv" --image-size $SIZE \
    --out "$RUNS/shortcut.json"
fi
if want zeroshot; then  # Kermany test split, the official CheXpert text queries
  RETRIEVAL=()
  for seed in $SEEDS; do
    RETRIEVAL+=(--encoder "$RUNS/pretrain-seed$seed/checkpoints/best.ckpt" --label "ConVIRT seed $seed")
  done
  first=${SEEDS%% *}
  timed zeroshot convirt evaluate zeroshot --dataset "$SHARED/kermany-pneumonia" --split test "${QUERIES[@]}" \
    "${RETRIEVAL[@]}" --encoder "random-like:$RUNS/pretrain-seed$first/checkpoints/best.ckpt" --label "random init" \
    --output "$RUNS/zeroshot-kermany"
  timed retrieval convirt evaluate retrieval --dataset "$SHARED/kermany-pneumonia" --split test "${QUERIES[@]}" \
    "${RETRIEVAL[@]}" --encoder "random-like:$RUNS/pretrain-seed$first/checkpoints/best.ckpt" --label "random init" \
    --encoder "mobilenet_v2=$IMAGENET" --label "ImageNet init" --image-size $SIZE --space h_v \
    --output "$RUNS/retrieval-kermany"
fi
if want figures; then
  python docs/results/real-covid/figures.py --runs "$RUNS" --out docs/results/real-covid
fi
