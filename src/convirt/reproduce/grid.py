"""The hyperparameter grid of Table 3: ``section.key=v1,v2,...`` items expanded into pretraining runs.

Two modes (``table3.mode``):

- ``one_at_a_time`` (default, the paper's Table 3): each value of each item is one run that changes that key
  alone; every other key keeps the plan's ConVIRT config. A value equal to the config's own is the default run,
  which the main pretraining already is, so it is not run again.
- ``product``: one run per combination of the items' values (a full factorial); the combination equal to the
  config is again the default run.

``table3.pretrain_seeds`` repeats the default run and every grid run with other ``train.seed`` values: the table
merges the replicates of a setting into one row (mean ± std across the pretraining runs).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import yaml

from convirt.config import Config, load_config
from convirt.errors import ConfigError

KEY_LABELS = {"loss.temperature": "τ = {}", "data.batch_size": "bs = {}"}
REPLICATE_KEY = "train.seed"  # runs that differ only in this key are replicates of one setting
VALUE_LABELS = {("model.head", "linear"): "linear proj.", ("model.head", "mlp"): "non-linear proj."}


@dataclass(frozen=True)
class GridRun:
    """One pretraining run of the grid: the keys it changes from the default config."""

    changes: tuple[tuple[str, object], ...]

    @property
    def name(self) -> str:
        """A folder and stage name: ``temperature-0.01``, ``batch_size-16+head-linear``."""
        parts = [f"{key.rsplit('.', 1)[-1]}-{_text(value)}" for key, value in self.changes]
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", "+".join(parts))

    @property
    def label(self) -> str:
        """The row label in the paper's words: ``τ = 0.01``, ``bs = 16``, ``linear proj.``."""
        labels = []
        for key, value in self.changes:
            named = VALUE_LABELS.get((key, value))
            labels.append(named or KEY_LABELS.get(key, f"{key} = {{}}").format(_text(value)))
        return ", ".join(labels)

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={_text(value)}" for key, value in self.changes]


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _current(config: Config, key: str) -> object:
    node: object = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return a == b


def parse_grid(items: list[str], config_path: str | None, overrides: list[str]) -> list[tuple[str, list]]:
    """``["loss.temperature=0.01,0.1,1", "model.head=linear"]`` -> ``[(key, [typed values]), ...]``.

    Every value is checked by building the config it gives, so a typo in a key or a wrong type is an error naming
    the grid item before anything runs.
    """
    parsed: list[tuple[str, list]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(
                f"table3 grid item {item!r} must look like section.key=v1,v2 (e.g. loss.temperature=0.01,1)"
            )
        if key in (k for k, _ in parsed):
            raise ConfigError(f"table3 grid names {key} twice; give all its values in one item ({key}=v1,v2)")
        values = []
        for text in raw.split(","):
            try:
                config = load_config(config_path, [*overrides, f"{key}={text.strip()}"])
            except ConfigError as exc:
                raise ConfigError(f"table3 grid item {item!r}: {exc}") from None
            values.append(_current(config, key))
        parsed.append((key, values))
    return parsed


def expand_grid(grid: list[tuple[str, list]], base: Config, mode: str = "one_at_a_time") -> list[GridRun]:
    """The runs of the grid (see the module docstring), without the default run, in the order given."""
    runs: list[GridRun] = []
    if mode == "one_at_a_time":
        for key, values in grid:
            for value in values:
                if not _same(value, _current(base, key)):
                    runs.append(GridRun(((key, value),)))
    elif mode == "product":
        keys = [key for key, _ in grid]
        for combination in itertools.product(*(values for _, values in grid)):
            changes = tuple((k, v) for k, v in zip(keys, combination) if not _same(v, _current(base, k)))
            if changes:
                runs.append(GridRun(changes))
    else:
        raise ConfigError(f"table3.mode {mode!r}: use one_at_a_time or product")
    return list(dict.fromkeys(runs))


def with_replicates(runs: list[GridRun], base: Config, seeds: list[int]) -> list[GridRun]:
    """The runs, then the default and every run again for each other pretraining seed (``train.seed``)."""
    extra = [s for s in dict.fromkeys(seeds) if s != base.train.seed]
    replicated = list(runs)
    for seed in extra:
        replicated += [GridRun(((REPLICATE_KEY, seed),)), *(GridRun((*r.changes, (REPLICATE_KEY, seed))) for r in runs)]
    return replicated
