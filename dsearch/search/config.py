"""The settings of a search (SearchConfig, the samplers and pruners) and their checks, made before anything is
loaded or written; each error states the rule it broke.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import optuna
import torch

from ..checks import check_device, check_number, check_resolution, check_seed
from ..cost.count import Cost, spec_cost
from ..cost.memory import check_fits_memory
from ..data import EMBEDDED_NAME, Dataset
from ..errors import DsearchError
from ..latency import Target, check_available, parse_target
from ..training.proxy import ProxyConfig, check_proxy
from .budget import MFLOPS, MPARAMS, Budget
from .resume import space_digest
from .spaces import Space, extreme_spec

OBJECTIVES = ("multi", "accuracy")
DEFAULT_TARGET = "ort-cpu"  # the latency target of --budget-ms without --latency-target


@dataclass(frozen=True)
class SearchConfig:
    space: str = "mobile"
    dataset: str = EMBEDDED_NAME
    data_dir: str | None = None
    budget_mflops: float | None = None
    budget_mparams: float | None = None
    resolution: int | None = None  # deployment resolution; None: the space's
    objective: str = "multi"  # multi: (val acc up, MFLOPs down); accuracy: val acc up
    sampler: str = "tpe"
    pruner: str = "median"  # used with objective "accuracy" (Optuna prunes single-objective studies only)
    seed: int = 0
    device: str = "auto"
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    # Latency (dsearch.latency): a limit in ms on a target; the target also makes latency the cost the 'multi'
    # objective minimises and the finals pick by. A table file copied from the deployment machine may stand in for
    # measuring here.
    budget_ms: float | None = None
    latency_target: str | None = None  # e.g. "ort-cpu"; None with budget_ms: DEFAULT_TARGET
    latency_table: str | None = None
    measure_latency: bool = False  # each trained candidate measured whole on the latency target (or on the device)
    # Multi-objective early stopping: stop a trial whose val acc after an epoch trails, by more than the margin,
    # a cheaper-or-equal Pareto-front trial's val acc after the same epoch (Optuna's pruners are single-objective).
    early_stop: bool = False
    early_stop_margin: float = 0.02

    @property
    def cost_target(self) -> Target | None:
        """The latency target that is the search's cost (None: MFLOPs are)."""
        if self.latency_target is None and self.budget_ms is None:
            return None
        return parse_target(self.latency_target or DEFAULT_TARGET)

    @property
    def budget(self) -> Budget:
        """The search's budget (its limits, counted at the deployment resolution)."""
        target = self.cost_target
        return Budget(self.budget_mflops, self.budget_mparams, self.resolution, ms=self.budget_ms,
                      latency_target=target.short if target is not None and self.budget_ms is not None else None)

    @property
    def counted_budget(self) -> Budget:
        """The limits the analytic cost model checks over a whole space (MFLOPs, params): counting a space's
        architectures within the budget leaves latency out, which each candidate's prediction checks."""
        return replace(self.budget, ms=None, latency_target=None)

    def identity(self, space: Space, train_resolution: int) -> dict[str, Any]:
        """The settings a study is bound to (see dsearch.search.resume); resuming with other values is refused."""
        proxy = {f"proxy.{k}": v for k, v in asdict(self.proxy).items() if k not in ("seed", "train_resolution")}
        return {"version": 2, "space": space.name, "space_sha256": space_digest(space), "dataset": self.dataset,
                **self.budget.stored(), "resolution": self.resolution or space.resolution,
                "train_resolution": train_resolution,
                "objective": self.objective, **proxy,
                # only when set: a study made without a latency target keeps its identity
                **({"latency_target": self.cost_target.name} if self.cost_target is not None else {})}


SAMPLER_FACTORIES: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    # constant_liar: a running trial of another worker counts as a poor result, so that workers spread out
    # (no effect with one worker, which never asks while its own trial runs).
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, constant_liar=True),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}
PRUNER_FACTORIES: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(),
    "none": lambda: optuna.pruners.NopPruner(),
}


def check_config(cfg: SearchConfig) -> None:
    """Every setting checked before anything is loaded or written; each error states the rule."""
    for value, flag in ((cfg.budget_mflops, "--budget-mflops"), (cfg.budget_mparams, "--budget-mparams"),
                        (cfg.budget_ms, "--budget-ms")):
        if value is not None:
            check_number(value, flag, low=0, low_open=True)
    target = cfg.cost_target  # a bad name is one line naming --latency-target
    if target is not None and cfg.latency_table is None:
        check_available(target)  # e.g. ort-cpu without onnxruntime: the line names the extra to install
    if cfg.latency_table is not None and target is None:
        raise DsearchError("--latency-table needs --latency-target (or --budget-ms): the table is for a target")
    check_resolution(cfg.resolution, "--resolution")
    if cfg.objective not in OBJECTIVES:
        raise DsearchError(f"unknown objective {cfg.objective!r}; valid: {', '.join(OBJECTIVES)}")
    for name, table, what in ((cfg.sampler, SAMPLER_FACTORIES, "sampler"), (cfg.pruner, PRUNER_FACTORIES, "pruner")):
        if name not in table:
            raise DsearchError(f"unknown {what} {name!r}; valid: {', '.join(table)}")
    check_seed(cfg.seed)
    check_device(cfg.device)
    check_proxy(cfg.proxy)


def check_fits(space: Space, data: Dataset, cfg: SearchConfig, device: torch.device) -> None:
    """Refuse settings whose activations cannot fit, on the space's largest candidate: counting its cost at the
    deployment resolution (on the CPU, at batch 1), and training it (with the images the trainer keeps on the
    device). Call after `check_budget_reachable`: a budget nothing fits is the first thing to say."""
    largest = extreme_spec(space, data.in_channels, data.num_classes, cfg.resolution, cheapest=False)
    check_fits_memory(largest, cfg.resolution or space.resolution, 1, torch.device("cpu"), "--resolution")
    train_images = len(data.train_x) if cfg.proxy.train_subset is None else min(cfg.proxy.train_subset,
                                                                                len(data.train_x))
    train_bytes = other_bytes = 0
    if device.type != "cpu":  # DeviceData copies the images there; on the CPU they are in host memory already
        image = data.train_x[:1].numel() * data.train_x.element_size()
        train_bytes, other_bytes = train_images * image, (len(data.val_x) + len(data.test_x)) * image
    check_fits_memory(largest, cfg.proxy.train_resolution or data.image_size[0], cfg.proxy.batch_size, device,
                      "--train-resolution", training=True, train_images=train_images, train_bytes=train_bytes,
                      other_bytes=other_bytes)


def check_budget_reachable(space: Space, data: Dataset, cfg: SearchConfig) -> Cost:
    """Fail at once when no valid architecture of the space fits a budget; returns the cost of the one with the
    fewest MACs. Each budget is compared with the valid architecture cheapest in what it counts."""
    cheapest = spec_cost(extreme_spec(space, data.in_channels, data.num_classes, cfg.resolution))
    res = cfg.resolution or space.resolution
    budget = cfg.budget
    if budget.over(MFLOPS, cheapest.mflops):
        raise DsearchError(
            f"no architecture of space '{space.name}' fits --budget-mflops {cfg.budget_mflops:g}: the cheapest costs "
            f"{cheapest.mflops:.2f} MFLOPs at {res}x{res}; raise the budget or use a smaller space/resolution")
    if budget.mparams is not None:
        fewest = spec_cost(extreme_spec(space, data.in_channels, data.num_classes, cfg.resolution, by_params=True))
        if budget.over(MPARAMS, fewest.mparams):
            raise DsearchError(
                f"no architecture of space '{space.name}' fits --budget-mparams {cfg.budget_mparams:g}: the smallest "
                f"has {fewest.mparams:.3f} M params; raise the budget or use a smaller space")
    return cheapest
