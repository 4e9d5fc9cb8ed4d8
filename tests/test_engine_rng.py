"""Which saved RNG state each process restores on resume: its own by global rank; another number of processes, or a
checkpoint holding process 0's state only, continues with a warning that says what happens."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import numpy as np
import torch

from convirt.config import Config
from convirt.engine.module import ObjectiveModule, all_processes, capture_rng_state, restore_rng_state


def module_on(rank: int, world_size: int) -> ObjectiveModule:
    module = ObjectiveModule(Config(), torch.nn.Linear(1, 1), {})
    module._trainer = SimpleNamespace(global_rank=rank, world_size=world_size)  # what Lightning attaches
    return module


def states(n: int) -> list[dict]:
    saved = []
    for seed in range(n):
        torch.manual_seed(seed)
        saved.append(capture_rng_state())
    return saved


def test_capture_and_restore_round_trip_every_generator() -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(state)
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]
    assert all_processes(state) == [state]  # no process group: this process's value alone


def test_each_process_restores_its_own_state(caplog) -> None:
    saved = states(2)
    with caplog.at_level(logging.WARNING, logger="convirt"):
        for rank in (0, 1):
            module = module_on(rank, 2)
            module.on_load_checkpoint({"convirt_state": {"rng_per_rank": saved, "skipped_images": ["a.png"]}})
            assert torch.equal(module._pending_rng["torch"], saved[rank]["torch"])
            assert module.skipped_images == (["a.png"] if rank == 0 else [])  # gathered once, carried by process 0
    assert not caplog.records


def test_another_number_of_processes_continues_with_a_warning(caplog) -> None:
    saved = states(2)
    with caplog.at_level(logging.WARNING, logger="convirt"):
        pending = [module_on(rank, 3)._rng_state_of_this_process({"rng_per_rank": saved}) for rank in range(3)]
    assert torch.equal(pending[1]["torch"], saved[1]["torch"]) and pending[2] is None  # rank 2 keeps its seeded state
    assert len(caplog.records) == 1  # process 0 says it
    assert "written by 2 process(es) on 3" in caplog.text and "skipped or repeated" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="convirt"):
        old = [module_on(rank, 2)._rng_state_of_this_process({"rng": saved[0]}) for rank in range(2)]
    assert all(torch.equal(state["torch"], saved[0]["torch"]) for state in old)  # process 0's state on both
    assert len(caplog.records) == 1 and "process 0 only" in caplog.text
