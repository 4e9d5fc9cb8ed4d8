"""The validation loss of checkpoints with batches in manifest order (the old behaviour) and in the engine's seeded
permutation (now), on the same validation pairs, views and sentences.

    python docs/results/real-covid/val_order.py runs/real-covid/pretrain-seed0/checkpoints/best.ckpt ...

Prints one JSON line per checkpoint: both losses and ln(batch) (chance).
"""

from __future__ import annotations

import json
import math
import sys

import torch

from convirt.encoders.checkpoint import load_model
from convirt.data.sampling import ShardedEvalSampler, draw_seed
from convirt.engine.data import PairedDataModule
from convirt.losses import ConVIRTLoss


def mean_loss(loaded, data: PairedDataModule, order: list[int]) -> float:
    """Mean loss over the full batches of ``order``, each pair drawn with the engine's per-pair seed."""
    config, dataset = loaded.config, data.val_set
    batch, seed = config.data.val_batch_size or config.data.batch_size, config.train.seed
    loss_fn = ConVIRTLoss(config.loss.temperature, config.loss.lambda_, gather=False)
    losses = []
    with torch.no_grad():
        for start in range(0, len(order) - batch + 1, batch):
            b = data.collate([dataset[(i, draw_seed(seed, -1, i))] for i in order[start : start + batch]])
            out = loaded.model(b["images"], b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
            losses.append(loss_fn(out.image_embeddings, out.text_embeddings).item())
    return sum(losses) / len(losses)


def main() -> None:
    for path in sys.argv[1:]:
        loaded = load_model(path)
        loaded.model.eval()
        data = PairedDataModule(loaded.config, loaded.tokenizer)
        data.setup()
        n = len(data.val_set)
        permuted = ShardedEvalSampler(n, seed=loaded.config.train.seed).order()
        batch = loaded.config.data.val_batch_size or loaded.config.data.batch_size
        result = {
            "checkpoint": path,
            "val_pairs": n,
            "batch": batch,
            "chance_ln_batch": round(math.log(batch), 4),
            "manifest_order": round(mean_loss(loaded, data, list(range(n))), 4),
            "seeded_permutation": round(mean_loss(loaded, data, permuted), 4),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
