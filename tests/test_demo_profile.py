"""benchmarks/demo_profile.py: py-spy's collapsed stacks sorted into the demo's pretraining stages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_profile.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stacks_are_split_by_their_innermost_stage(tmp_path: Path) -> None:
    profile = load_script()
    main = 'process 1:"python";<module> (x.py:1);Trainer.fit (lightning/trainer.py:5)'
    step = main + ";optimizer_step (lightning/x.py:1);Adam.step (torch/optim/adam.py:9);closure (lightning/x.py:2)"
    raw = tmp_path / "profile.raw"
    raw.write_text(
        "\n".join(
            [  # (stack, samples): the Adam update wraps the closure that runs forward and backward
                f"{step};training_step (convirt/engine/module.py:1);TextEncoder.forward (convirt/models/text.py:2) 40",
                f"{step};training_step (convirt/engine/module.py:1);ImageEncoder.forward (models/image.py:3) 20",
                f"{step};backward (torch/_tensor.py:1);_engine_run_backward (torch/autograd/graph.py:2) 30",
                f"{step};_single_tensor_adam (torch/optim/adam.py:500) 6",
                f"{main};_EvaluationLoop.run (lightning/loops/evaluation_loop.py:1);validation_step (m.py:1) 8",
                f"{main};_EvaluationLoop._on_evaluation_end (l.py:1);save_checkpoint (engine/callbacks.py:70) 4",
                'process 1:"python";process 2:"python";_worker_loop (torch/utils/data/_utils/worker.py:1) 50',
                f"{main};something_else (x.py:3) 2",
            ]
        )
        + "\n"
    )
    seconds = profile.split(raw)
    rate = profile.RATE
    assert dict(seconds) == pytest.approx(
        {
            "step: forward, text encoder": 40 / rate,
            "step: forward, image encoder": 20 / rate,
            "step: backward": 30 / rate,
            "step: Adam update": 6 / rate,
            "validation (incl. the sanity check)": 8 / rate,
            "checkpoint writes": 4 / rate,  # the best checkpoint, saved at the end of a validation
            "data loading in DataLoader worker processes": 50 / rate,
            "other": 2 / rate,
        }
    )
