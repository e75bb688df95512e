#!/usr/bin/env python3
"""Reproduce the seed papers' claims on the embedded data and write docs/results.md.

Two experiments, each network trained with the full schedule of `dsearch train`
(`dsearch.training.full.train_full` with `FullTrainConfig()` defaults) on the embedded Fashion-MNIST
subset at its own 28x28 size, several seeds each:

- equal cost: MobileNetV2 with its published depthwise-separable conv (DSC) at a few width
  multipliers, against the same net with BSConv-U and BSConv-S swapped in, each at the largest
  width whose MFLOPs@224x224 do not exceed the DSC net's;
- SCC: the same net at one width with sliding-channel convs over groups x overlap, against DSC
  at that width (SCC at g=1, o=0 is DSC's dense pointwise);
- survey: the conv kinds of issue 26 (ChannelNets' dscw and gcwconv, ShuffleNet's shuffle, the CP
  and Tucker factorisations) swapped into MobileNetV2 with their default knobs, each at the largest
  width whose MFLOPs@224x224 do not exceed the DSC net's, as BSConv is (`--survey-kinds` picks them).

Resumable: each finished run is written to the results JSON at once, and a rerun skips the runs
already there for the same schedule. The markdown is rewritten after every run and says which
planned runs are still missing; `--render-only` rewrites it from the JSON without training.

    python scripts/make_results.py                      # the grid, 3 seeds, resumes where it stopped
    python scripts/make_results.py --quick              # 1 seed, 1 epoch: checks the script (build/)
    python scripts/make_results.py --epochs 10          # another schedule: its runs are kept apart
    python scripts/make_results.py --only '*w0.5*'      # only the configurations whose label matches
    python scripts/make_results.py --render-only        # rewrite docs/results.md from docs/results.json
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import dsearch  # noqa: E402
from dsearch.cost import spec_cost  # noqa: E402
from dsearch.data import EMBEDDED_NAME  # noqa: E402
from dsearch.errors import DsearchError  # noqa: E402
from dsearch.model.archspec import ArchSpec  # noqa: E402
from dsearch.model.ops import CONV_TYPES  # noqa: E402
from dsearch.model.presets import mobilenet_v2, with_conv  # noqa: E402

DATASET = EMBEDDED_NAME
IN_CHANNELS, NUM_CLASSES = 1, 10  # the embedded data's
COST_RESOLUTION = 224  # where MFLOPs and params are counted (MobileNetV2's design size)
# The DSC nets that set the cost points. make_divisible's rounding to 8 channels makes cost a step function of the
# width, with steps up to ~40%: at these two every BSConv net gets within 5% of the DSC net's cost (at the published
# 0.5 BSConv-S would be 27% cheaper); 0.55 rather than 0.75 halves the training time of the first point.
DEFAULT_WIDTHS = (0.55, 1.0)
SCC_WIDTH = 0.55  # a cost point's width, so that SCC shares its DSC runs
SCC_GRID = ((2, 0.0), (2, 0.5), (4, 0.0), (4, 0.5))  # (groups, overlap)
BSCONV_KINDS = ("bsconv_u", "bsconv_s")
# Every other registered kind (registry order: dscw, gcwconv, shuffle, cp, tucker), against DSC at equal MFLOPs,
# default knobs.
SURVEY_KINDS = tuple(k for k in CONV_TYPES if k not in ("regular", "dsc", *BSCONV_KINDS, "scc"))
WIDTH_STEP = 0.01  # the width grid searched for the equal-cost nets
WIDTH_GRID = tuple(round(0.1 + WIDTH_STEP * i, 2) for i in range(391))  # 0.10 .. 4.00
DEFAULT_JSON, DEFAULT_MD = REPO / "docs" / "results.json", REPO / "docs" / "results.md"
QUICK_JSON, QUICK_MD = REPO / "build" / "results-quick.json", REPO / "build" / "results-quick.md"
CONV_NAMES = {name: ct.display for name, ct in CONV_TYPES.items()}  # DSC, BSConv-U, ..., as the papers write them

# Two-sided 95% quantiles of Student's t by degrees of freedom (a standard table); a fractional df uses the
# next lower entry, which is the conservative side.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}

HOLDS, FAILS, UNSEPARATED = "holds", "does not hold", "not separable at this number of seeds"
ROW_VERDICTS = {HOLDS: "more accurate than DSC", FAILS: "less accurate than DSC", UNSEPARATED: UNSEPARATED}


@dataclass(frozen=True)
class Config:
    """One network of the grid: MobileNetV2 at `width` with every conv unit of kind `conv`."""

    experiment: str  # "equal-cost", "scc" or "survey"
    point: float  # the width of the DSC net this one is compared with
    conv: str
    width: float
    knobs: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        extra = "".join(f"_{k[0]}{v:g}" for k, v in self.knobs)
        return f"mobilenet_v2_w{self.width:g}_{self.conv}{extra}"

    def spec(self) -> ArchSpec:
        return config_spec(self.conv, self.width, self.knobs)


def config_spec(conv: str, width: float, knobs: Iterable[tuple[str, Any]] = ()) -> ArchSpec:
    base = mobilenet_v2(width, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, resolution=COST_RESOLUTION)
    return base if conv == "dsc" else with_conv(base, conv, **dict(knobs))


def cost_of(conv: str, width: float, knobs: Iterable[tuple[str, Any]] = ()) -> int:
    """MACs at COST_RESOLUTION (analytic, equal to fvcore's count)."""
    return spec_cost(config_spec(conv, width, tuple(knobs))).macs


@functools.lru_cache(maxsize=64)
def match_width(conv: str, target_macs: int, grid: Sequence[float] = WIDTH_GRID) -> float:
    """The largest grid width at which `conv`'s MobileNetV2 costs at most `target_macs`.

    Every channel count grows with the width (make_divisible never rounds a larger value lower) and every cost
    with the channel counts, so the scan stops at the first width over the target.
    """
    fitting = list(itertools.takewhile(lambda w: cost_of(conv, w) <= target_macs, sorted(grid)))
    if not fitting:
        raise DsearchError(f"no {conv} MobileNetV2 width in {grid[0]:g}..{grid[-1]:g} costs at most "
                           f"{target_macs / 1e6:.2f} MFLOPs@{COST_RESOLUTION}x{COST_RESOLUTION}; "
                           "choose a larger DSC width")
    return max(fitting)


def plan_configs(widths: Sequence[float], scc_width: float | None, survey: Sequence[str] = ()) -> list[Config]:
    """Equal-cost nets for each DSC width (BSConv, then the `survey` kinds), then SCC over SCC_GRID at `scc_width`
    (None: no SCC experiment)."""
    configs = []
    for point in widths:
        configs.append(Config("equal-cost", point, "dsc", point))
        target = cost_of("dsc", point)
        configs += [Config("equal-cost", point, kind, match_width(kind, target)) for kind in BSCONV_KINDS]
        configs += [Config("survey", point, kind, match_width(kind, target)) for kind in survey]
    if scc_width is not None:
        if scc_width not in widths:  # SCC's reference: DSC at its width, without BSConv partners
            configs.append(Config("equal-cost", scc_width, "dsc", scc_width))
        configs += [Config("scc", scc_width, "scc", scc_width, (("groups", g), ("overlap", o))) for g, o in SCC_GRID]
    return configs


def reference(config: Config) -> Config:
    """The DSC net `config` is compared with."""
    return Config("equal-cost", config.point, "dsc", config.point)


@dataclass(frozen=True)
class Run:
    config: Config
    seed: int

    @property
    def key(self) -> str:
        return f"{self.config.label}/seed{self.seed}"


def plan_runs(configs: Sequence[Config], seeds: int, only: Sequence[str] = ()) -> list[Run]:
    """Runs in the order that makes partial results most useful: the first (cheapest) cost point, then the SCC grid
    at its width, then the other cost points; within each, every configuration's seed 0, then seed 1, ..."""
    wanted = [c for c in configs if not only or any(fnmatch.fnmatchcase(c.label, pat) for pat in only)]
    needed = {reference(c) for c in wanted if c.conv != "dsc"}  # a comparison needs its DSC reference
    wanted += [c for c in configs if c in needed and c not in wanted]
    points = sorted({c.point for c in wanted})
    runs: list[Run] = []
    for point in points:
        for experiment in ("equal-cost", "scc", "survey"):
            block = sorted((c for c in wanted if c.point == point and c.experiment == experiment), key=configs.index)
            runs += [Run(c, s) for s in range(seeds) for c in block]
    return runs


# ---------------------------------------------------------------------------------------------------- results file


def schedule_of(proxy: Any) -> dict[str, Any]:
    """The training schedule (everything but the seed) that a stored run must match to count as done."""
    from dsearch.training.schedule import settings_key

    return settings_key(proxy, without=("seed",))


def load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": 1, "runs": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DsearchError(f"{path} is not valid JSON ({err}); move it away to start afresh") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise DsearchError(f"{path} holds no 'runs' object; it is not a results file of this script")
    return data


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def stored_key(run_key: str, schedule: dict[str, Any]) -> str:
    """Runs with other schedules (e.g. --quick, --epochs) are kept apart under their own key."""
    return f"{run_key}/e{schedule['epochs']}" + ("" if schedule.get("train_subset") is None
                                                 else f"/n{schedule['train_subset']}")


def same_schedule(stored: dict[str, Any] | None, schedule: dict[str, Any]) -> bool:
    """Whether a stored run's schedule is `schedule`. A setting the stored run predates counts as its default:
    ProxyConfig's settings are added with a default that trains as before (bn_recompute=0: no recomputation)."""
    from dataclasses import fields

    from dsearch.training.proxy import ProxyConfig

    if not isinstance(stored, dict):
        return False
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(ProxyConfig)}))
    return all(stored.get(k, defaults.get(k)) == v for k, v in schedule.items()) and set(stored) <= set(schedule)


def done_runs(results: dict[str, Any], runs: Sequence[Run], schedule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stored records of `runs` made with `schedule`, by run key."""
    found = {}
    for run in runs:
        record = results["runs"].get(stored_key(run.key, schedule))
        if record is not None and same_schedule(record.get("schedule"), schedule):
            found[run.key] = record
    return found


# ------------------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    lo: float
    hi: float


def summarise(values: Sequence[float]) -> Summary | None:
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Summary(n, mean, std, min(values), max(values))


def t_quantile(df: float) -> float:
    """Two-sided 95% critical value of Student's t with `df` degrees of freedom (table, conservative)."""
    return T975[max([d for d in T975 if d <= df], default=1)]


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean(a) - mean(b)
    se: float  # standard error of the difference (Welch)
    margin: float  # half-width of the 95% interval of the difference
    verdict: str  # HOLDS (a > b), FAILS (a < b) or UNSEPARATED


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison | None:
    """Welch's two-sample t-test at 5% (two-sided) of mean(a) against mean(b); None without values."""
    sa, sb = summarise(a), summarise(b)
    if sa is None or sb is None:
        return None
    diff = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return Comparison(diff, math.nan, math.nan, UNSEPARATED)
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Comparison(diff, 0.0, 0.0, UNSEPARATED if diff == 0 else HOLDS if diff > 0 else FAILS)
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    margin = t_quantile(df) * se
    verdict = HOLDS if diff - margin > 0 else FAILS if diff + margin < 0 else UNSEPARATED
    return Comparison(diff, se, margin, verdict)


def overall_verdict(verdicts: Sequence[str], subject: str = "BSConv", net: str = "a BSConv net") -> str:
    """One sentence on a claim that `subject` is at least as accurate as DSC, from the per-comparison verdicts."""
    if not verdicts:
        return f"cannot be judged yet: no cost point has finished runs of both DSC and {net}"
    counts = {v: verdicts.count(v) for v in (HOLDS, FAILS, UNSEPARATED)}
    n = len(verdicts)
    every = "the only comparison" if n == 1 else f"all {n} comparisons"
    if counts[HOLDS] == n:
        return f"**holds** here: {subject} is significantly more accurate than DSC in {every}"
    if counts[FAILS] == n:
        return f"**does not hold** here: {subject} is significantly less accurate than DSC in {every}"
    if counts[UNSEPARATED] == n:
        return (f"is **not separable at this number of seeds**: {every} show{'s' if n == 1 else ''} no significant "
                "difference either way")
    if counts[HOLDS] and not counts[FAILS]:
        return (f"**holds** where it is separable: {subject} is significantly more accurate in {counts[HOLDS]} of {n} "
                "comparisons and not separable from DSC in the others")
    if counts[FAILS] and not counts[HOLDS]:
        return (f"**does not hold** where it is separable: {subject} is significantly less accurate in "
                f"{counts[FAILS]} of {n} comparisons and not separable from DSC in the others")
    return (f"is **mixed** here: {subject} is significantly more accurate in {counts[HOLDS]}, less accurate in "
            f"{counts[FAILS]} and not separable in {counts[UNSEPARATED]} of {n} comparisons")


# -------------------------------------------------------------------------------------------------------- markdown


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def fmt_summary(s: Summary | None) -> str:
    if s is None:
        return "–"
    return f"{pct(s.mean)} ± {pct(s.std)}" if s.n > 1 else pct(s.mean)


def fmt_range(s: Summary | None) -> str:
    return "–" if s is None else f"{pct(s.lo)}–{pct(s.hi)}"


def fmt_comparison(c: Comparison | None) -> str:
    if c is None:
        return "–"
    if math.isnan(c.margin):
        return f"{100 * c.diff:+.2f} (one seed: no interval)"
    return f"{100 * c.diff:+.2f} ± {100 * c.margin:.2f}"


def accuracies(records: dict[str, dict[str, Any]], config: Config, seeds: int, metric: str) -> list[float]:
    return [records[k][metric] for s in range(seeds) if (k := Run(config, s).key) in records]


def row_name(config: Config, scc: bool) -> str:
    if not scc:
        return CONV_NAMES[config.conv]
    knobs = dict(config.knobs)
    return "1 | 0 (DSC)" if config.conv == "dsc" else f"{knobs['groups']} | {knobs['overlap']:g}"


def table(configs: Sequence[Config], records: dict[str, dict[str, Any]], seeds: int, scc: bool) -> list[str]:
    """A markdown table of `configs` (SCC's has g and o columns), each compared with its DSC reference."""
    first = "g | o" if scc else "conv"
    lines = [f"| {first} | width | MFLOPs@{COST_RESOLUTION}x{COST_RESOLUTION} | M params | cost / DSC | "
             "seeds | test acc % (mean ± std) | test min–max | val acc % (mean ± std) | "
             "Δ test vs DSC (± 95% CI) | verdict |",
             "|" + "---|" * (12 if scc else 11)]
    for c in configs:
        cost = spec_cost(c.spec())
        ratio = cost.macs / spec_cost(reference(c).spec()).macs
        test = accuracies(records, c, seeds, "test_acc")
        val = summarise(accuracies(records, c, seeds, "val_acc"))
        if c.conv == "dsc":
            delta, verdict = "(reference)", ""
        else:
            comp = compare(test, accuracies(records, reference(c), seeds, "test_acc"))
            delta, verdict = fmt_comparison(comp), "" if comp is None else ROW_VERDICTS[comp.verdict]
        lines.append(f"| {row_name(c, scc)} | {c.width:g} | {cost.mflops:.2f} | {cost.mparams:.3f} | "
                     f"{ratio:.3f} | {len(test)}/{seeds} | {fmt_summary(summarise(test))} | "
                     f"{fmt_range(summarise(test))} | {fmt_summary(val)} | {delta} | {verdict} |")
    return lines


def rows_summary(configs: Sequence[Config], records: dict[str, dict[str, Any]], seeds: int, what: str) -> str:
    """One sentence counting the rows (`what`: e.g. "SCC configurations at this width") more, less and not
    separably accurate than DSC."""
    comps = [compare(accuracies(records, c, seeds, "test_acc"), accuracies(records, reference(c), seeds, "test_acc"))
             for c in configs]
    verdicts = [c.verdict for c in comps if c is not None]
    parts = [f"{verdicts.count(v)} {ROW_VERDICTS[v]}" for v in (HOLDS, FAILS, UNSEPARATED) if v in verdicts]
    if len(verdicts) < len(configs):
        parts.append(f"{len(configs) - len(verdicts)} without finished runs on both sides")
    return f"Of the {len(configs)} {what}: {', '.join(parts)}."


def verdicts_against_dsc(configs: Sequence[Config], records: dict[str, dict[str, Any]], seeds: int,
                         kinds: Iterable[str]) -> list[str]:
    """The verdict of each row of a conv kind in `kinds` against its DSC reference (rows with runs on both sides)."""
    wanted = set(kinds)
    out = []
    for c in configs:
        if c.conv in wanted:
            comp = compare(accuracies(records, c, seeds, "test_acc"),
                           accuracies(records, reference(c), seeds, "test_acc"))
            if comp is not None:
                out.append(comp.verdict)
    return out


def facts_line(records: Iterable[dict[str, Any]], field: str) -> str:
    values = sorted({str(r.get(field)) for r in records})
    return ", ".join(values) if values else "–"


def render(configs: Sequence[Config], runs: Sequence[Run], records: dict[str, dict[str, Any]],
           meta: dict[str, Any]) -> str:
    """The whole of docs/results.md from the plan and the finished runs (partial results said to be partial)."""
    seeds = meta["seeds"]
    done = [records[r.key] for r in runs if r.key in records]
    missing = [r for r in runs if r.key not in records]
    planned = {r.config for r in runs}
    bsconv_points = {c.point for c in configs if c.conv in BSCONV_KINDS and c in planned}
    equal = [c for c in configs if c.experiment == "equal-cost" and c.point in bsconv_points and c in planned]
    scc_ref = {reference(c) for c in configs if c.conv == "scc" and c in planned}
    scc = [c for c in configs if (c.conv == "scc" and c in planned) or c in scc_ref]
    survey = [c for c in configs if c.experiment == "survey" and c in planned]
    dates = sorted(r["date"] for r in done)
    verdicts = verdicts_against_dsc(equal, records, seeds, BSCONV_KINDS)
    planned_comparisons = sum(c.conv in BSCONV_KINDS for c in equal)
    claim = overall_verdict(verdicts)
    if len(verdicts) < planned_comparisons:
        claim += (f" ({len(verdicts)} of the {planned_comparisons} planned comparisons "
                  f"{'has' if len(verdicts) == 1 else 'have'} finished runs on both sides)")
    out = [
        "# Results: the seed papers' claims on the embedded data",
        "",
        f"Made by `{meta['command']}` (scripts/make_results.py; rerun it to resume: finished runs are kept in "
        f"`{meta['json']}` and skipped). Rendered {meta['now']}.",
        "",
        f"- Runs finished: **{len(done)} of {len(runs)} planned**"
        + (" (partial results: the missing runs are listed at the end)" if missing else "") + ".",
        f"- Dataset: `{DATASET}` ({meta['data_text']}), trained at its own size: no resizing.",
        f"- Cost: MFLOPs (fvcore's multiply-accumulates) and parameters counted at {COST_RESOLUTION}x"
        f"{COST_RESOLUTION}, {IN_CHANNELS} input channel, {NUM_CLASSES} classes (`dsearch.cost.spec_cost`).",
        f"- Schedule: the full schedule of `dsearch train` (`train_full`, `FullTrainConfig()` defaults): "
        f"{meta['schedule_text']}.",
        f"- Seeds: {seeds} per configuration (`ProxyConfig.seed` 0..{seeds - 1}: weights, data order, augmentation "
        "and the validation split); mean ± sample standard deviation, and min–max, over the finished seeds.",
        f"- Software: dsearch {facts_line(done, 'dsearch')}, torch {facts_line(done, 'torch')}, "
        f"Python {facts_line(done, 'python')}.",
        f"- Hardware: {facts_line(done, 'device_name')}; threads: {facts_line(done, 'threads')}.",
        f"- Dates (UTC): {dates[0]} to {dates[-1]}." if dates else "- Dates: no run finished yet.",
        *([f"- Not shown: the results file also holds runs of other schedules ({meta['elsewhere']}); "
           "`--epochs` selects a schedule."] if meta.get("elsewhere") else []),
        "",
        "## The BSConv claim",
        "",
        "The BSConv paper (Haase & Amthor, CVPR 2020) reports BSConv-U and BSConv-S at least as accurate as "
        "depthwise-separable convs at equal cost. Here, on the numbers below (test accuracy, each BSConv net against "
        f"the DSC net of its cost point), the direction of that claim {claim}.",
        "",
        "A comparison is separable when the 95% interval of the difference of mean test accuracies (Welch's t, "
        "two-sided) excludes zero: \"holds\" when BSConv is then more accurate, \"does not hold\" when less. With "
        "one seed of either net there is no interval, and the comparison is not separable.",
    ]
    if equal:
        out += ["", "## BSConv-U and BSConv-S against DSC at equal MFLOPs", "",
                "MobileNetV2 (Sandler et al. 2018) as published uses DSC; each BSConv net takes the largest width "
                f"multiplier (in steps of {WIDTH_STEP:g}) whose MFLOPs@{COST_RESOLUTION}x{COST_RESOLUTION} do not "
                "exceed the DSC net's. Accuracies in %."]
        for point in sorted({c.point for c in equal}):
            out += ["", f"### Cost point: DSC MobileNetV2 at width {point:g}", ""]
            out += table([c for c in equal if c.point == point], records, seeds, scc=False)
    if scc:
        out += ["", "## SCC across groups and overlap", "",
                "Sliding-channel convs (SCC): each output channel of the pointwise part reads a window of M/g input "
                "channels; neighbouring windows share a fraction o of it. g=1, o=0 is DSC's dense pointwise, the "
                "reference row. Same width for every row, so SCC nets are cheaper than DSC. Accuracies in %."]
        for point in sorted({c.point for c in scc}):
            rows = sorted((c for c in scc if c.point == point), key=lambda c: c.conv != "dsc")
            out += ["", f"### Width {point:g}", "", *table(rows, records, seeds, scc=True), "",
                    rows_summary([c for c in rows if c.conv == "scc"], records, seeds,
                                 "SCC configurations at this width")]
    if survey:
        out += ["", "## Other separable convs against DSC at equal MFLOPs", "",
                "MobileNetV2 with each conv kind swapped in at its default knobs (docs/design.md): ChannelNets' "
                "depthwise separable channel-wise conv (DWSCW) and group channel-wise fusion (GCWConv), ShuffleNet's "
                "grouped pointwise convs with a channel shuffle, and CP and Tucker factorisations of the k x k conv. "
                "Each takes the largest width multiplier (in steps of "
                f"{WIDTH_STEP:g}) whose MFLOPs@{COST_RESOLUTION}x{COST_RESOLUTION} do not exceed the DSC net's. "
                "Accuracies in %."]
        survey_claim = overall_verdict(verdicts_against_dsc(survey, records, seeds, SURVEY_KINDS),
                                       "the swapped-in kind", "a net of these kinds")
        out += ["", "The papers behind these kinds (ChannelNets, Gao et al. 2018; ShuffleNet, Zhang et al. 2018; "
                "Kossaifi et al. 2020) report them as cheaper than depthwise-separable convs for little or no loss of "
                "accuracy. Here, each against the DSC net of its cost point (test accuracy), the claim that it is at "
                f"least as accurate at equal MFLOPs {survey_claim}. Where no interval separates them, the row is a "
                "tie: more seeds would be needed to tell them apart."]
        for point in sorted({c.point for c in survey}):
            rows = [reference(c) for c in survey if c.point == point][:1] + [c for c in survey if c.point == point]
            out += ["", f"### Cost point: DSC MobileNetV2 at width {point:g}", "",
                    *table(rows, records, seeds, scc=False), "",
                    rows_summary([c for c in rows if c.conv != "dsc"], records, seeds, "conv kinds at this cost point")]
    out += ["", "## Missing runs", ""]
    if missing:
        out += [f"{len(missing)} planned run(s) have not finished; rerun the command above to train them:", ""]
        out += [f"- `{r.key}`" for r in missing]
    else:
        out += ["None: every planned run finished."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------- running


def hardware_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return f"GPU {torch.cuda.get_device_name(0)}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def train_one(run: Run, full_cfg: Any, threads: int, command: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Train one run with train_full; the record kept in the results file."""
    import torch

    from dsearch.training.full import train_full
    cfg = replace(full_cfg, proxy=replace(full_cfg.proxy, seed=run.seed))
    spec = run.config.spec()
    result, facts = train_full(spec, cfg, log=lambda msg: log(f"  {msg}"))
    cost = spec_cost(spec)
    return {
        "label": run.config.label, "experiment": run.config.experiment, "point": run.config.point,
        "conv": run.config.conv, "width": run.config.width, "knobs": dict(run.config.knobs), "seed": run.seed,
        "mflops": cost.mflops, "mparams": cost.mparams, "cost_resolution": COST_RESOLUTION,
        "train_resolution": facts["train_resolution"], "dataset": facts["dataset"],
        "val_acc": result.val_acc, "test_acc": result.test_acc, "history": result.history,
        "train_time_s": round(result.train_time_s, 1), "device": result.device,
        "device_name": hardware_name(result.device), "threads": threads, "schedule": schedule_of(cfg.proxy),
        "dsearch": dsearch.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), "command": command,
    }


def schedule_text(schedule: dict[str, Any], lr: float | None) -> str:
    parts = [f"{schedule['epochs']} epochs", f"batch {schedule['batch_size']}", schedule["optimizer"]]
    if lr is not None:
        parts.append(f"peak lr {lr:g}")
    parts += ["warm-up then cosine decay", f"label smoothing {schedule['label_smoothing']:g}",
              "shift/flip augmentation" if schedule["augment"] else "no augmentation"]
    if schedule.get("train_subset") is not None:
        parts.append(f"at most {schedule['train_subset']} training images")
    return ", ".join(parts)


def other_schedules(results: dict[str, Any], schedule: dict[str, Any]) -> str:
    """Runs in the results file made with other schedules, e.g. '4 runs of 20 epochs'."""
    counts: dict[str, int] = {}
    for rec in results["runs"].values():
        other = rec.get("schedule") or {}
        if not same_schedule(other, schedule):
            subset = "" if other.get("train_subset") is None else f" on {other['train_subset']} images"
            name = f"{other.get('epochs')} epochs{subset}"
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} run{'s' if n > 1 else ''} of {name}" for name, n in sorted(counts.items()))


def data_text() -> str:
    """The embedded data's splits as train_full sees them (the validation split is carved out of train)."""
    from dsearch.data import load_dataset
    data = load_dataset(DATASET)
    size = "x".join(map(str, data.image_size))
    return (f"the embedded Fashion-MNIST subset: {len(data.train_x):,} training, {len(data.val_x):,} validation and "
            f"{len(data.test_x):,} test images of {data.in_channels} channel at {size}, {data.num_classes} classes")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--epochs", type=int, help="epochs per run (default: FullTrainConfig's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--widths", default=",".join(f"{w:g}" for w in DEFAULT_WIDTHS),
                   help="DSC width multipliers that set the equal-cost points (default %(default)s)")
    p.add_argument("--scc-width", type=float, default=SCC_WIDTH,
                   help="width of the SCC experiment (default %(default)s; 0 leaves it out)")
    p.add_argument("--survey-kinds", nargs="*", default=list(SURVEY_KINDS), metavar="KIND",
                   choices=list(SURVEY_KINDS),
                   help="conv kinds compared with DSC at equal MFLOPs at each cost point, default knobs "
                        "(default: %(default)s; none: `--survey-kinds` alone)")
    p.add_argument("--only", default="", help="comma-separated label globs, e.g. '*w0.5_dsc,*scc*'")
    p.add_argument("--quick", action="store_true",
                   help="check the script: 1 seed, 1 epoch (on the whole training split: train_full takes no "
                        "subset), outputs under build/ unless --json/--md are given")
    p.add_argument("--json", type=Path, help=f"results file (default {DEFAULT_JSON.relative_to(REPO)})")
    p.add_argument("--md", type=Path, help=f"markdown written (default {DEFAULT_MD.relative_to(REPO)})")
    p.add_argument("--render-only", action="store_true", help="rewrite the markdown from the results file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from dsearch.training.full import FullTrainConfig, full_proxy
    try:
        widths = [float(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        print(f"error: --widths {args.widths!r} is not a comma-separated list of numbers, e.g. 0.5,1.0",
              file=sys.stderr)
        return 2
    if not widths or any(not 0 < w <= WIDTH_GRID[-1] for w in widths) or not 0 <= args.scc_width <= WIDTH_GRID[-1]:
        print(f"error: widths must be in (0, {WIDTH_GRID[-1]:g}], e.g. --widths 0.55,1.0", file=sys.stderr)
        return 2
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1) or args.threads < 1:
        print("error: --seeds, --epochs and --threads must be at least 1", file=sys.stderr)
        return 2
    seeds = 1 if args.quick else args.seeds
    base = FullTrainConfig(device=args.device)
    epochs = 1 if args.quick else args.epochs or base.proxy.epochs
    full_cfg = replace(base, proxy=replace(base.proxy, epochs=epochs))
    json_path = args.json or (QUICK_JSON if args.quick else DEFAULT_JSON)
    md_path = args.md or (QUICK_MD if args.quick else DEFAULT_MD)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    try:
        configs = plan_configs(widths, args.scc_width or None, args.survey_kinds)
        runs = plan_runs(configs, seeds, only)
        if not runs:
            raise DsearchError(f"--only {args.only!r} matches no configuration; labels look like "
                               f"{configs[0].label}")
        results = load_results(json_path)
    except DsearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    schedule = schedule_of(full_cfg.proxy)
    lr = full_proxy(full_cfg.proxy).lr  # what train_full runs with
    shown_json = json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path
    shown_md = md_path.relative_to(REPO) if md_path.is_relative_to(REPO) else md_path
    command = "python scripts/make_results.py" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv) if a != "--render-only")
    meta = {"command": command, "json": str(shown_json), "seeds": seeds, "schedule_text": schedule_text(schedule, lr),
            "data_text": data_text()}

    def write_md() -> None:
        records = done_runs(results, runs, schedule)
        meta["elsewhere"] = other_schedules(results, schedule)
        meta["now"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        write_atomic(md_path, render(configs, runs, records, meta))

    if args.render_only:
        write_md()
        print(f"wrote {shown_md} from {shown_json}")
        return 0
    import torch
    torch.set_num_threads(args.threads)
    todo = [r for r in runs if r.key not in done_runs(results, runs, schedule)]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already in {shown_json}; {len(todo)} to train "
          f"({epochs} epochs each, {args.threads} thread(s))", flush=True)
    write_md()
    for i, run in enumerate(todo, 1):
        start = time.perf_counter()
        print(f"[{i}/{len(todo)}] {run.key}", flush=True)
        try:
            record = train_one(run, full_cfg, args.threads, command, lambda msg: print(msg, flush=True))
        except DsearchError as err:
            print(f"error: {run.key}: {err}", file=sys.stderr)
            return 2
        results = load_results(json_path)  # another process may have added runs meanwhile
        results["runs"][stored_key(run.key, schedule)] = record
        write_atomic(json_path, json.dumps(results, indent=1, sort_keys=True) + "\n")
        write_md()
        print(f"  done in {time.perf_counter() - start:.0f} s: test {record['test_acc']:.4f}, "
              f"val {record['val_acc']:.4f}", flush=True)
    print(f"wrote {shown_json} and {shown_md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
