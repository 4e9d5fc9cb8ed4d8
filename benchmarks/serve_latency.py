"""Query latency of `convirt serve` on a 10k-image index: the target is under 100 ms per query on a 2-core CPU.

    python benchmarks/serve_latency.py                      # 10,000 rows, d = 512, ResNet18 + MiniLM ConVIRT
    python benchmarks/serve_latency.py --size 10000 --repeats 100 --threads 1 2

The index holds random unit vectors (the ranking's cost does not depend on their values) in the checkpoint's
projection space, with random labels, and names the benchmark's checkpoint as its encoder, so the explorer loads
it exactly as it loads a real index. The checkpoint is the one ``benchmarks/search_speed.py`` builds: the real
MiniLM text tower (``builtin:minilm``, 6 layers, 384 wide) with random heads and a random image encoder (weights do
not change speed). Timed, one query at a time after a warm-up, each text query a different sentence:

- the text encoder alone (tokenise + MiniLM + head);
- the explorer in process: a text query (encode + rank + hits), an image query by index row (rank only), with
  the label filter;
- the same over HTTP on the loopback interface: ``convirt serve`` in its own process, request to last byte (what
  the page waits for);

each with 1 and 2 torch threads (``--threads``; the server gets them through ``OMP_NUM_THREADS``).

Prints the median, 90th percentile and maximum wall time in milliseconds as a Markdown table, and the CPU time
per query of the process that answers it (all its threads; for HTTP the server's): on a shared machine the wall
time grows with the load, the CPU time much less. With the CPU, its vector extensions and the load average before
and after.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import quote, urlsplit

import torch

from search_speed import random_checkpoint

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LABELS = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture", "Pleural Effusion", "Pneumonia", "Pneumothorax")


def synthetic_index(checkpoint: Path, size: int, folder: Path) -> Path:
    """A ``size``-row index of random unit vectors in the checkpoint's space, built "with" that checkpoint."""
    from convirt.analysis.search import ImageIndex
    from convirt.encoders.embedders import load_embedder

    embedder = load_embedder(str(checkpoint))
    dim = embedder.embed_texts(["x"]).shape[1]
    generator = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)
    labels = [[LABELS[i % len(LABELS)]] for i in range(size)]
    paths = [f"img{i:06d}.png" for i in range(size)]
    index = ImageIndex(str(folder), paths, vectors, "v", str(checkpoint), embedder.fingerprint, labels=labels)
    return index.save(folder / "synthetic.index.pt")


def timed(function: Callable[[int], object], repeats: int, cpu_clock: Callable[[], float]) -> tuple[list[float], float]:
    """Wall milliseconds of each call, and the mean CPU milliseconds per call (all threads of the process that
    ``cpu_clock`` reads: this one, or the server)."""
    function(-1)  # warm-up
    times = []
    cpu_start = cpu_clock()
    for i in range(repeats):
        start = time.perf_counter()
        function(i)
        times.append(1000 * (time.perf_counter() - start))
    return times, 1000 * (cpu_clock() - cpu_start) / repeats


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(url: str) -> Callable[[str], bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def get(path: str) -> bytes:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
        return body

    return get


def http_queries(get: Callable[[str], bytes], k: int, n: int, sentence: Callable[[int], str]) -> dict:
    label = quote(LABELS[1])
    return {
        f"HTTP: text query, top-{k}": lambda i: get(f"/api/search?k={k}&text={quote(sentence(i))}"),
        f"HTTP: text query + Precision@{k} of a label": (
            lambda i: get(f"/api/search?k={k}&label={label}&text={quote(sentence(i))}")
        ),
        f"HTTP: image query (index row), top-{k}": lambda i: get(f"/api/similar?k={k}&row={i % n}"),
    }


@contextmanager
def server_process(index: Path, threads: int, log: Path) -> Iterator[tuple[str, int]]:
    """``convirt serve INDEX --port 0`` in its own process with ``threads`` torch threads; yields its URL and pid."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "convirt.cli", "serve", str(index), "--port", "0"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            found = [line for line in log.read_text().splitlines() if line.startswith("convirt explorer: ")]
            if found:
                yield found[0].split()[2], process.pid
                return
            time.sleep(0.2)
        raise SystemExit(f"the server did not start:\n{log.read_text()}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def cpu_description() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model} ({', '.join(vector) or 'no AVX2'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="index rows")
    parser.add_argument("--image-encoder", default="resnet18", help="architecture of the random model")
    parser.add_argument("-k", type=int, default=12, help="hits per query (the page's default)")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op threads to compare")
    args = parser.parse_args()
    load_before = os.getloadavg()

    from convirt.app.explorer import Explorer, ExplorerSettings, ImageRef

    rows: list[tuple[str, int, list[float], float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = random_checkpoint(folder, args.image_encoder)
        index_file = synthetic_index(checkpoint, args.size, folder)
        explorer = Explorer(ExplorerSettings(index_file))
        if explorer.encoder_error or explorer.index is None:
            raise SystemExit(explorer.encoder_error or explorer.index_error)
        embedder, dim, k, n = explorer.embedder, explorer.index.embeddings.shape[1], args.k, args.size
        sentence = "A small left pleural effusion number {} is present.".format
        for threads in args.threads:
            torch.set_num_threads(threads)
            in_process = {
                "text encoder alone (MiniLM + head)": lambda i: embedder.embed_texts([sentence(i)]),
                f"in process: text query, top-{k}": lambda i: explorer.text_search(sentence(i), k),
                f"in process: image query (index row), top-{k}": lambda i: explorer.similar(ImageRef(row=i % n), k),
                f"in process: image query, label filter, top-{k}": (
                    lambda i: explorer.similar(ImageRef(row=i % n), k, LABELS[0], True)
                ),
            }
            rows += [(name, threads, *timed(run, args.repeats, time.process_time)) for name, run in in_process.items()]
            with server_process(index_file, threads, folder / "server.log") as (url, pid):
                over_http = http_queries(http_get(url), k, n, sentence)
                server_cpu = partial(process_cpu_seconds, pid)
                rows += [(name, threads, *timed(run, args.repeats, server_cpu)) for name, run in over_http.items()]
        explorer.close()

    load_after = os.getloadavg()
    print(
        f"{cpu_description()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"index {args.size:,} x {dim} (float32); {args.repeats} queries per row; load average (1/5/15 min) "
        f"{'/'.join(f'{v:.1f}' for v in load_before)} before, {'/'.join(f'{v:.1f}' for v in load_after)} after"
    )
    print()
    print("| query | torch threads | median ms | p90 ms | max ms | CPU ms per query |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, threads, times, cpu in rows:
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"| {name} | {threads} | {statistics.median(times):.1f} | {p90:.1f} | {max(times):.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
