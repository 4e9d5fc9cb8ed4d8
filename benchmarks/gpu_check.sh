#!/usr/bin/env bash
# One unattended check of convirt's CUDA paths; writes a Markdown report to OUTDIR/report.md.
#
#     benchmarks/gpu_check.sh OUTDIR                 # on a GPU machine: under 8 minutes on one GPU
#     GPU_CHECK_SIZE=tiny benchmarks/gpu_check.sh OUTDIR
#
# Sections: (1) training throughput of the paper model (ResNet50@224 + BERT-base) in fp32, bf16 and fp16 autocast, with
# channels_last and with torch.compile (benchmarks/train_throughput.py); (2) DataLoader views/s of the paper
# augmentations (torchvision and fused renderers) at several worker counts; (3) a short bf16-autocast pretraining run on
# synthetic pairs, killed with SIGKILL after its first resume checkpoint and resumed, checked to continue from that
# checkpoint to the end; (4) text-image retrieval and a linear probe of the pretrained encoder on the GPU; (5) DDP with
# NCCL over every visible GPU when there are more than one. Without a CUDA device every CUDA part is skipped with a
# message, and the same steps run on the CPU at tiny sizes, so the script's own logic (kill, resume, checks, report) is
# exercised.
#
# Offline: the synthetic data is generated here; the text encoder is builtin:minilm (GPU_CHECK_TEXT_ENCODER to
# change it). Environment: PYTHON (default python; convirt must be importable), GPU_CHECK_SIZE (full | tiny;
# default full with a GPU, always tiny without one). Any failed step stops the script with a non-zero exit status,
# a "FAILED" line in the report and the failing step's log in OUTDIR/logs.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEXT_ENCODER=${GPU_CHECK_TEXT_ENCODER:-builtin:minilm}
mkdir -p "$OUT/logs" "$OUT/work"
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
WORK=$OUT/work
REPORT=$OUT/report.md
SECTION="set-up"
STARTED=$(date +%s)

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\n**FAILED** in section "%s" (exit status %s); logs: %s\n' "$SECTION" "$rc" "$LOGS" >>"$REPORT"
        echo "gpu_check: FAILED in section \"$SECTION\" (exit status $rc); see $LOGS and $REPORT" >&2
    fi
}
trap on_exit EXIT

fail() {
    echo "gpu_check: $*" >&2
    printf '\n%s\n' "$*" >>"$REPORT"
    exit 1
}

say() { printf '%s\n' "$*" >>"$REPORT"; }

# Run a command with its output in $LOGS/NAME.log; on failure show the log's tail and stop.
run_logged() {
    local name=$1
    shift
    echo "gpu_check: $name: $*" >&2
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        tail -n 30 "$LOGS/$name.log" >&2
        fail "step '$name' failed: $* (log: $LOGS/$name.log)"
    fi
}

convirt() { "$PYTHON" -m convirt.cli "$@"; }

section() {
    SECTION=$1
    SECTION_START=$(date +%s)
    printf '\n## %s\n\n' "$1" >>"$REPORT"
    echo "gpu_check: == $1" >&2
}

section_end() { say "" && say "_section time: $(($(date +%s) - SECTION_START)) s_"; }

"$PYTHON" -c "import convirt" 2>/dev/null || {
    echo "gpu_check: $PYTHON cannot import convirt (set PYTHON to the environment's python)" >&2
    exit 1
}
NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$NGPU" -gt 0 ]; then
    DEVICE=cuda
    SIZE=${GPU_CHECK_SIZE:-full}
else
    DEVICE=cpu
    SIZE=tiny
fi
case "$SIZE" in full | tiny) ;; *) echo "gpu_check: GPU_CHECK_SIZE must be full or tiny, got '$SIZE'" >&2 && exit 2 ;; esac
NO_CUDA="SKIPPED (no CUDA device: torch.cuda.is_available() is False)"

{
    echo "# convirt GPU check"
    echo
    echo "Written by \`benchmarks/gpu_check.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); size: $SIZE; device: $DEVICE."
    echo
    echo '```'
    "$PYTHON" - <<'EOF'
import os, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if torch.cuda.is_available() else None}")
print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, load average "
      f"{os.getloadavg()[0]:.1f}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
if not torch.cuda.is_available():
    print("GPU: none visible")
EOF
    echo '```'
} >"$REPORT"

# ---------------------------------------------------------------------------------------------------------------
section "1. Training throughput"
if [ "$DEVICE" = cuda ]; then
    if [ "$SIZE" = full ]; then
        THROUGHPUT=(--steps 5)
    else
        THROUGHPUT=(--tiny --steps 2)
    fi
    run_logged throughput "$PYTHON" "$HERE/train_throughput.py" --device cuda --skip-loader --require-compile \
        --variants fp32,fp32+cl,bf16+cl,fp16+cl,bf16+cl+compile "${THROUGHPUT[@]}"
    grep -v '^  measured' "$LOGS/throughput.log" | grep -v '^W[0-9]' >>"$REPORT"
else
    say "CUDA variants (fp32, bf16 and fp16 autocast, + channels_last, + compile): $NO_CUDA."
    say ""
    say "CPU dry run of the same script, tiny model, fp32 and fp32 + channels_last:"
    say ""
    run_logged throughput "$PYTHON" "$HERE/train_throughput.py" --device cpu --tiny --steps 1 --threads 1 \
        --skip-loader --variants fp32,fp32+cl
    grep '^|' "$LOGS/throughput.log" >>"$REPORT"
fi
section_end

# ---------------------------------------------------------------------------------------------------------------
section "2. DataLoader views/s"
CORES=$("$PYTHON" -c "import os; print(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
if [ "$SIZE" = full ]; then
    WORKERS=0
    for w in 2 4 8 16; do [ "$w" -le "$CORES" ] && WORKERS="$WORKERS,$w"; done
    LOADER=(--workers "$WORKERS" --loader-batches 12 --loader-images 320)
else
    LOADER=(--workers 0,1 --loader-batches 2 --loader-batch 4 --loader-images 16)
fi
say "The paper's augmentations with tokenisation, on the CPU ($CORES cores usable by this process):"
say ""
run_logged loader "$PYTHON" "$HERE/train_throughput.py" --skip-train "${LOADER[@]}"
grep '^|' "$LOGS/loader.log" >>"$REPORT"
section_end

# ---------------------------------------------------------------------------------------------------------------
section "3. Pretraining killed (SIGKILL) and resumed"
if [ "$SIZE" = full ]; then
    STUDIES=800 && IMAGE_PX=256
    PRETRAIN=(model.image_encoder=resnet50 model.image_weights=none model.freeze_layers=3 data.batch_size=32
        data.num_workers=4 data.augment.output_size=224 train.val_every_steps=20 train.max_evals=3 train.checkpoint_every_steps=10
        train.limit_val_batches=2)
else
    STUDIES=48 && IMAGE_PX=64
    PRETRAIN=(model.image_encoder=resnet18 model.image_weights=none model.freeze_layers=1 model.projection_dim=32
        data.batch_size=4 data.num_workers=0 data.augment.output_size=32 data.augment.blur_kernel_size=3
        train.val_every_steps=3 train.max_evals=3 train.checkpoint_every_steps=2 train.limit_val_batches=1)
fi
if [ "$DEVICE" = cuda ]; then
    PRECISION=bf16-mixed
else
    PRECISION=32
    say "bf16 autocast on CUDA: $NO_CUDA. CPU dry run in fp32 at tiny size (bf16 is emulated on most CPUs)."
    say ""
fi
SYN=$WORK/synthetic
run_logged synthesize convirt synthesize --out "$SYN" --size "$STUDIES" --image-size "$IMAGE_PX" --workers 4
run_logged prepare convirt prepare csv --input "$SYN" --table pairs.csv --output "$WORK/prepared" \
    --image-size "$IMAGE_PX" --val-size 0.2 --workers 4
RUN=$WORK/pretrain
PRETRAIN+=(data.manifest="$WORK/prepared/manifest.csv" train.output_dir="$RUN" model.text_encoder="$TEXT_ENCODER"
    train.precision=$PRECISION train.accelerator=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu) train.devices=1
    train.progress_bar=false train.tensorboard=false train.log_every_steps=1 train.keep_checkpoints=best_last)
rm -rf "$RUN"
echo "gpu_check: pretrain (to be killed): convirt pretrain ${PRETRAIN[*]}" >&2
"$PYTHON" -m convirt.cli pretrain "${PRETRAIN[@]}" >"$LOGS/pretrain-killed.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
    [ -f "$RUN/checkpoints/last.ckpt" ] && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.5
done
if ! kill -0 "$PID" 2>/dev/null; then
    wait "$PID" || true
    tail -n 30 "$LOGS/pretrain-killed.log" >&2
    fail "the pretraining run ended before it could be killed (log: $LOGS/pretrain-killed.log)"
fi
[ -f "$RUN/checkpoints/last.ckpt" ] || fail "no checkpoints/last.ckpt after 300 s of pretraining"
kill -9 "$PID"
STATUS=0 && wait "$PID" || STATUS=$?
[ "$STATUS" -eq 137 ] || fail "the killed pretraining run exited with status $STATUS, not 137 (SIGKILL)"
[ ! -f "$RUN/summary.json" ] || fail "the pretraining run had finished before the kill; lengthen it"
STEP_AT_KILL=$("$PYTHON" -c "from convirt.fileio import load_torch_file; import sys
print(load_torch_file(sys.argv[1])['global_step'])" "$RUN/checkpoints/last.ckpt")
run_logged pretrain-resumed convirt pretrain "${PRETRAIN[@]}"
grep -q "resuming from .*last.ckpt" "$LOGS/pretrain-resumed.log" || fail "the second run did not say it resumed"
RESUME=$("$PYTHON" - "$RUN" "$STEP_AT_KILL" "$PRECISION" <<'EOF'
import json, sys
from pathlib import Path
from convirt.config import load_config
run, step_at_kill = Path(sys.argv[1]), int(sys.argv[2])
summary = json.loads((run / "summary.json").read_text())
max_steps = load_config(run / "config.yaml").max_steps
sessions = sorted(p.name for p in (run / "logs").iterdir() if p.name.startswith("version_"))
problems = []
if not summary.get("resumed_from", "").endswith("last.ckpt"):
    problems.append(f"summary.json resumed_from is {summary.get('resumed_from')!r}")
if summary["steps"] != max_steps:
    problems.append(f"the resumed run ended at step {summary['steps']}, not {max_steps}")
if len(sessions) != 2:
    problems.append(f"expected 2 logged sessions, found {sessions}")
if not 0 < step_at_kill < max_steps:
    problems.append(f"the kill left a checkpoint at step {step_at_kill}, not inside the run (0, {max_steps})")
if summary.get("final_val_loss") is None:
    problems.append("no final validation loss")
if problems:
    print("; ".join(problems))
    sys.exit(1)
print(f"killed after the resume checkpoint of step {step_at_kill}; resumed from it "
      f"({summary['resumed_from']}) and finished at step {summary['steps']} of {max_steps}; "
      f"final validation loss {summary['final_val_loss']:.4f}; precision {sys.argv[3]}")
EOF
) || fail "resume check failed: $RESUME"
say "Run: \`convirt pretrain ${PRETRAIN[*]}\` (precision $PRECISION, $STUDIES synthetic studies)."
say ""
say "Resume check passed: $RESUME"
section_end

# ---------------------------------------------------------------------------------------------------------------
section "4. Retrieval and linear probe"
CKPT=$RUN/checkpoints/best.ckpt
[ -f "$CKPT" ] || CKPT=$RUN/checkpoints/last.ckpt
if [ "$DEVICE" = cpu ]; then
    say "On the GPU: $NO_CUDA. CPU dry run of the same commands:"
    say ""
fi
run_logged retrieval convirt evaluate retrieval --dataset "manifest:$SYN/labels.csv" --split all \
    --prompts "$SYN/text_queries.csv" --encoder "$CKPT" --device "$DEVICE" --output "$WORK/retrieval"
run_logged linear-probe convirt evaluate classify --dataset "manifest:$SYN/labels.csv" --encoder "$CKPT" \
    --protocol linear --fractions 1 --seeds 1 --device "$DEVICE" --output "$WORK/classify"
say "Text-image and image-image retrieval on the synthetic labels (\`convirt evaluate retrieval --device $DEVICE\`):"
say ""
# the first table (the paper's Table 2 layout); retrieval.md has the per-category tables after it
awk '/^\|/ { found = 1; print; next } found { exit }' "$WORK/retrieval/retrieval.md" >>"$REPORT"
grep -q '^| ConVIRT' "$WORK/retrieval/retrieval.md" || fail "no ConVIRT row in $WORK/retrieval/retrieval.md"
say ""
say "Linear probe at 100 % of the labels, one seed (\`convirt evaluate classify --device $DEVICE\`):"
say ""
[ -f "$WORK/classify/summary.md" ] || fail "the linear probe wrote no $WORK/classify/summary.md"
grep '^|' "$WORK/classify/summary.md" >>"$REPORT"
section_end

# ---------------------------------------------------------------------------------------------------------------
section "5. DDP with NCCL"
if [ "$NGPU" -gt 1 ]; then
    DDP_RUN=$WORK/ddp
    rm -rf "$DDP_RUN"
    run_logged ddp convirt pretrain "${PRETRAIN[@]}" train.output_dir="$DDP_RUN" train.devices="$NGPU" \
        train.strategy=ddp train.max_evals=1
    DDP=$("$PYTHON" -c "import json, sys; s = json.load(open(sys.argv[1])); print(s['steps'], s['final_val_loss'])" \
        "$DDP_RUN/summary.json") || fail "the DDP run wrote no readable summary.json"
    grep -qi "nccl" "$LOGS/ddp.log" || say "(the log does not name the backend; DDPStrategy uses nccl on GPUs)"
    say "DDP over $NGPU GPUs (\`train.strategy=ddp\`, NCCL): finished; steps and final validation loss: $DDP."
else
    say "SKIPPED: DDP with NCCL needs more than one GPU; $NGPU visible."
fi
section_end

SECTION="end"
TOTAL=$(($(date +%s) - STARTED))
say ""
say "## Result"
say ""
say "All checks passed in $TOTAL s."
if [ "$DEVICE" = cuda ] && [ "$SIZE" = full ] && [ "$TOTAL" -gt 480 ]; then
    say "Over the 8-minute budget of one GPU ($TOTAL s): shorten the slowest section above."
fi
echo "gpu_check: all checks passed in $TOTAL s; report: $REPORT" >&2
