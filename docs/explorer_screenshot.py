"""The explorer's screenshot in docs/: serve an index and let headless Chromium photograph the page.

    python docs/explorer_screenshot.py runs/demo/work/test-images.index.pt docs/explorer.png
    python docs/explorer_screenshot.py INDEX OUT.png --query "Cardiomegaly is present." --label Cardiomegaly

The view: a text query with the Precision@k of a label, and the detail panel of its first hit (Grad-CAM of the
query, zero-shot scores), opened from its address (``?q=...&label=...&select=ROW``). Chromium's own ``--screenshot``
takes the picture (Debian: ``apt-get install chromium``); the PNG is reduced to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from PIL import Image

from convirt.app.explorer import Explorer, ExplorerSettings
from convirt.app.server import background_server, create_app

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("output")
    parser.add_argument("--query", default="A pleural effusion is present.")
    parser.add_argument("--label", default="Pleural Effusion", help="label whose Precision@k is shown")
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--size", default="1280,800", help="window width,height")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Chromium (Debian: apt-get install chromium)")

    explorer = Explorer(ExplorerSettings(Path(args.index)))
    first = explorer.text_search(args.query, args.k)["hits"][0]["row"]
    view = urlencode({"q": args.query, "k": args.k, "label": args.label, "select": first})
    output = Path(args.output).resolve()
    with background_server(create_app(explorer)) as url, tempfile.TemporaryDirectory() as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}",
                   "--virtual-time-budget=60000", f"--screenshot={output}", f"{url}?{view}"]  # fmt: skip
        subprocess.run(command, check=True, timeout=600, capture_output=True)
    explorer.close()
    with Image.open(output) as picture:
        picture.convert("RGB").quantize(256).save(output, optimize=True)
    print(f"wrote {output} ({output.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
