"""Contact sheets: a PNG grid of search results (the query first, then each hit with its rank and score)."""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from convirt.data.images import load_image
from convirt.errors import ImageLoadError
from convirt.fileio import atomic_write_bytes

CAPTION_LINES = 2


def _thumbnail(path: str | os.PathLike, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size), (32, 32, 32))
    try:
        image = load_image(path, mode="RGB")
    except ImageLoadError:
        return tile
    image.thumbnail((size, size))
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def _text_tile(text: str, size: int, font) -> Image.Image:
    tile = Image.new("RGB", (size, size), (245, 245, 235))
    draw = ImageDraw.Draw(tile)
    lines = textwrap.wrap(f'"{text}"', width=max(8, size // 7))[: size // 16]
    draw.multiline_text((6, 6), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=3)
    return tile


def contact_sheet(
    hits: Sequence,
    output: str | os.PathLike,
    query_text: str | None = None,
    query_image: str | os.PathLike | None = None,
    columns: int = 5,
    thumb_size: int = 160,
) -> Path:
    """Write a PNG grid: the query (image, or the text on a card) then the hits (``rank``, ``score``, ``path``)."""
    try:
        font = ImageFont.load_default(size=12)  # scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):  # pragma: no cover - old Pillow: bitmap font
        font = ImageFont.load_default()
    line_height = 14
    caption = line_height * CAPTION_LINES + 6
    cells: list[tuple[Image.Image, list[str]]] = []
    if query_image is not None:
        cells.append((_thumbnail(query_image, thumb_size), ["QUERY", Path(query_image).name]))
    elif query_text is not None:
        cells.append((_text_tile(query_text, thumb_size, font), ["QUERY (text)", ""]))
    for hit in hits:
        cells.append((_thumbnail(hit.path, thumb_size), [f"#{hit.rank}  {hit.score:.3f}", Path(hit.path).name]))
    columns = max(1, min(columns, len(cells)))
    rows = (len(cells) + columns - 1) // columns
    pad = 4
    sheet = Image.new("RGB", (columns * (thumb_size + pad) + pad, rows * (thumb_size + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    max_chars = max(8, thumb_size // 6)
    for i, (tile, lines) in enumerate(cells):
        x = pad + (i % columns) * (thumb_size + pad)
        y = pad + (i // columns) * (thumb_size + caption + pad)
        sheet.paste(tile, (x, y))
        for j, line in enumerate(lines):
            text = line if len(line) <= max_chars else "..." + line[-(max_chars - 3) :]
            draw.text((x + 2, y + thumb_size + 2 + j * line_height), text, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(output, buffer.getvalue())
    return Path(output)
