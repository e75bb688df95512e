"""What to tell a user whose batch, step count or learning rate cannot train: one-line warnings before training,
and the likely causes of a result at chance accuracy after it.

`subset` says whether the command has `--train-subset` (`dsearch run`) or trains on the whole split
(`dsearch train`, the finals' full schedule): a fix names only flags the command has.
"""
from __future__ import annotations

import math

from .proxy import DEFAULT_LR, ProxyConfig, TrainResult, fit_batch, peak_lr, steps_per_epoch

# Fewer optimizer steps per epoch than this: a proxy's few epochs are a handful of updates, rarely enough to learn.
MIN_STEPS_PER_EPOCH = 10
# A peak learning rate this many times the optimizer's default at batch 128 is far above it: linear scaling is
# trusted over a few doublings of the batch, not the 70x of one batch of the whole embedded training split.
HIGH_LR_FACTOR = 10
# A training loss that rose this many times above guessing's (ln of the class count) diverged on the way, even where
# it stayed under the limit that fails a training (proxy.DIVERGED_LOSS_FACTOR).
RISEN_LOSS_FACTOR = 2


def more_steps(subset: bool = True) -> str:
    """The fix for too few steps, naming the flags the command has."""
    if subset:
        return "lower --batch-size, or raise --train-subset or --epochs"
    return "lower --batch-size or raise --epochs"


def lower_lr(cfg: ProxyConfig) -> str:
    """The fix for a learning rate too high: a given --lr is used as is; the default one follows the batch."""
    if cfg.lr is not None:
        return "lower --lr"
    return "lower --batch-size (the default lr scales with it) or give a smaller --lr"


def clamp_warning(cfg: ProxyConfig, n_train: int) -> str | None:
    """The warning for a --batch-size larger than the `n_train` training images (the trainer clamps it), else None."""
    used = fit_batch(cfg, n_train)
    if used.batch_size == cfg.batch_size:
        return None
    lr = "" if cfg.lr is not None else f", and the default learning rate is scaled to that batch ({peak_lr(used):.4g})"
    return (f"--batch-size {cfg.batch_size} is larger than the training split ({n_train} images): training uses "
            f"batches of {used.batch_size}{lr}; give --batch-size {n_train} or less")


def plural(n: int, word: str) -> str:
    """`n` and `word`, with an s unless n is 1."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def steps_warning(cfg: ProxyConfig, n_train: int, subset: bool = True) -> str | None:
    """The warning for fewer than MIN_STEPS_PER_EPOCH optimizer steps per epoch over `n_train` images, else None."""
    steps = steps_per_epoch(cfg, n_train)
    if steps >= MIN_STEPS_PER_EPOCH:
        return None
    batch = fit_batch(cfg, n_train).batch_size
    return (f"only {plural(steps, 'training step')} per epoch ({n_train} images in batches of {batch}; "
            f"{steps * cfg.epochs} over {plural(cfg.epochs, 'epoch')}): too few to learn much; {more_steps(subset)}")


Cause = tuple[str, str]  # (what was seen, its fix)


def chance_causes(result: TrainResult, cfg: ProxyConfig, num_classes: int, subset: bool = True) -> list[Cause]:
    """What in a training at chance accuracy likely caused it, each with its fix; empty when nothing shows."""
    causes = []
    guess = math.log(max(2, num_classes))
    if result.peak_loss > RISEN_LOSS_FACTOR * guess:
        causes.append((f"the training loss diverged (it rose to {result.peak_loss:.3g}, "
                       f"{result.peak_loss / guess:.0f}x the {guess:.2f} of guessing)", lower_lr(cfg)))
    if 0 < result.steps_per_epoch < MIN_STEPS_PER_EPOCH:
        causes.append((f"only {plural(result.steps_per_epoch, 'step')} per epoch (batch {result.batch_size})",
                       more_steps(subset)))
    default = DEFAULT_LR[cfg.optimizer]
    if result.lr >= HIGH_LR_FACTOR * default:
        causes.append((f"a peak learning rate of {result.lr:.3g}, {result.lr / default:.0f}x the {cfg.optimizer} "
                       f"default of {default:g} at batch 128", lower_lr(cfg)))
    return causes


def chance_advice(causes: list[Cause], subset: bool = True) -> str:
    """The likely causes of a result at chance with their fixes (each once), or, where none shows, the general
    advice."""
    if causes:
        fixes = list(dict.fromkeys(fix for _, fix in causes))
        return f"likely cause: {'; '.join(what for what, _ in causes)}; to fix: {'; or '.join(fixes)}"
    more_data = ", more data than --train-subset" if subset else ""
    return f"train longer (--epochs{more_data}) or check the data"
