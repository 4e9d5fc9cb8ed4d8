"""A 600-image training subset of Kermany (random, seed 0) + the full 624-image test set, decoded at reduced
scale (JPEG draft mode) and resized so the shorter side is 128 px; file names (patient ids) are kept."""
import random, sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rng = random.Random(0)
train = sorted(p for p in (src / "train").rglob("*.jpeg"))
chosen = rng.sample(train, 600)
test = sorted(p for p in (src / "test").rglob("*.jpeg"))
for path in chosen + test:
    out = dst / path.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as im:
        im.draft("L", (256, 256))
        im = im.convert("L")
        scale = 128 / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        im.save(out.with_suffix(".png"))
print(len(chosen), len(test))
