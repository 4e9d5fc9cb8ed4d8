"""``convirt serve``: the local web explorer over an image index (needs ``pip install 'convirt[app]'``).

::

    convirt serve images.index.pt                                   # http://127.0.0.1:8000/
    convirt serve images.index.pt --checkpoint best.ckpt --port 8080
    convirt serve new.index.pt --images IMAGE_DIR --checkpoint best.ckpt   # index the folder first (resumable)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from convirt.cli.options import labelled_options
from convirt.cli.search import add_label_options, index_images
from convirt.errors import ConfigError

APP_PACKAGES = ("fastapi", "uvicorn")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a local web page to search an index by text or image, with labels, Grad-CAM and zero-shot scores",
        description="Serve the explorer over an index made by `convirt index`: text and image search, each hit's "
        "label and Precision@k, Grad-CAM for the text query, zero-shot class scores. Binds 127.0.0.1 unless told "
        "otherwise. Needs the app extra: pip install 'convirt[app]'.",
    )
    parser.add_argument("index", metavar="INDEX", help="an index file made by `convirt index` (or by --images)")
    parser.add_argument("--checkpoint", metavar="CKPT", help="encoder for queries (default: the index's own; must "
                        "be the encoder that built the index)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--images", metavar="DIR", help="first index this folder into INDEX (resumable, incremental)")
    add_label_options(parser)
    parser.add_argument("--prompts", default=None, help="zero-shot classes: a prompt file, or builtin:chexpert "
                        "(the default: the 40 official CheXpert 8x200 sentences)")  # fmt: skip
    parser.add_argument("--saliency-layer", default="finer", help="Grad-CAM block: finer (stride 16, the default), "
                        "last (the last feature map) or a dotted module name such as layer3")  # fmt: skip
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for queries (default: torch's; "
                        "1 keeps text queries fast on a busy machine, see docs/benchmarks.md)")  # fmt: skip
    parser.set_defaults(func=_run_serve)


def missing_app_packages() -> list[str]:
    return [name for name in APP_PACKAGES if importlib.util.find_spec(name) is None]


def _run_serve(args: argparse.Namespace) -> int:
    missing = missing_app_packages()
    if missing:
        raise ConfigError(
            f"convirt serve needs the app extra ({', '.join(missing)} missing): pip install 'convirt[app]'"
        )
    from convirt.app.explorer import DEFAULT_PROMPTS, Explorer, ExplorerSettings
    from convirt.app.server import bind, create_app, is_loopback, serve, url_of

    if args.max_upload_mb <= 0:
        raise ConfigError("--max-upload-mb must be positive")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    if (args.labels or args.split) and not args.images:
        raise ConfigError("--labels and --split label the images of --images DIR; without it, index with labels "
                          "first: convirt index DIR --checkpoint CKPT --labels DATASET")  # fmt: skip
    sock = bind(args.host, args.port)  # before any model loads: a taken port fails at once
    if args.images:
        spec = args.checkpoint or _stored_encoder(args.index)
        index_images(
            spec,
            args.index,
            image_dir=args.images,
            labels_spec=args.labels,
            split=args.split,
            dataset_options=labelled_options(args),
            progress=True,
        )
    settings = ExplorerSettings(
        index=Path(args.index),
        checkpoint=args.checkpoint,
        prompts=args.prompts or DEFAULT_PROMPTS,
        saliency_layer=None if args.saliency_layer == "last" else args.saliency_layer,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
    )
    explorer = Explorer(settings)
    about = explorer.about()
    if not about["ok"]:
        print(f"convirt serve: the page will show why there is nothing to explore: {about['index_error']}",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"index {args.index}: {about['images']} images in {about['space']}, encoder {about['encoder_spec']}")
        if about["encoder_error"]:
            print(f"convirt serve: warning: {about['encoder_error']}", file=sys.stderr)
    if not is_loopback(args.host):
        print(
            f"convirt serve: warning: serving on {args.host}, not only on this machine: anyone who can reach it on "
            f"port {sock.getsockname()[1]} can search and view the indexed images (there is no login). The default, "
            "--host 127.0.0.1, keeps the explorer on this machine.",
            file=sys.stderr,
        )
    print(f"convirt explorer: {url_of(sock)} (Ctrl-C stops)", flush=True)
    try:
        serve(create_app(explorer, args.host), sock)
    finally:
        explorer.close()
    return 0


def _stored_encoder(index_path: str) -> str:
    """The encoder an existing index was built with (``--images`` without ``--checkpoint`` updates it)."""
    from convirt.analysis.search import ImageIndex

    if not Path(index_path).is_file():
        raise ConfigError(f"{index_path} does not exist yet: give --checkpoint CKPT to build it from --images")
    return ImageIndex.load(index_path).encoder_spec
