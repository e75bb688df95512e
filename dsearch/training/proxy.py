"""The proxy trainer: trains an ArchSpec on in-memory data and reports validation accuracy per epoch.

Fast on both kinds of machine: data lives on the device as uint8 tensors (augmented there, no
DataLoader workers, no per-batch host work); on CPUs the model runs in channels_last, on CUDA
each training step's forward and backward replay as CUDA graphs (see CUDA_GRAPHS).
"""
from __future__ import annotations

import ctypes
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_number, check_resolution, check_seed
from ..errors import Deadline, DsearchError, Terminated, check_interrupted, terminated
from ..latency.cpu_lock import training_shared
from ..model.archspec import ArchSpec
from ..model.builder import build_model
from ..model.ops import CONV_TYPES
from .fastpath import specialise


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial fails with this reason, the study goes on."""


@dataclass(frozen=True)
class ProxyConfig:
    epochs: int = 2
    batch_size: int = 128
    train_subset: int | None = None  # use at most this many training images
    train_resolution: int | None = None  # None: the data's own size
    optimizer: str = "sgd"  # sgd | adamw
    lr: float | None = None  # None: 0.04 for sgd, 0.002 for adamw at batch 128, scaled linearly to the batch used
    weight_decay: float | None = None  # None: 5e-4 for sgd, 0.05 for adamw
    label_smoothing: float = 0.0
    bsconv_alpha: float = 0.1
    augment: bool = True
    # Batch-norm statistics recomputed before each evaluation from this many unaugmented training batches
    # (0: keep the running averages of the last training steps).
    bn_recompute: int = 0
    seed: int = 0


OPTIMIZERS = ("sgd", "adamw")
# Peak learning rate at batch 128 when ProxyConfig.lr is None. SGD's 0.04: at 0.1 single 2-epoch runs of some
# architectures collapsed (10 sampled architectures x 3 seeds: 3 runs 8-27 points below their other seeds, none
# at 0.04), and the mean validation accuracy was 3 points lower (benchmarks/bench_reliability.py, docs/benchmarks.md).
DEFAULT_LR = {"sgd": 0.04, "adamw": 0.002}
# A training whose mean cross-entropy over a few steps exceeds this many times guessing's (ln of the class count)
# has diverged even while it stays finite: --lr 50 on the embedded data climbs to ~1e5 and ends at chance, where
# default runs stay near 1x from the first step, and the worst spike seen to recover (--lr 5) averaged 8.4x over
# its first epoch (8 steps of batch 128).
DIVERGED_LOSS_FACTOR = 10.0


def fit_batch(cfg: ProxyConfig, n_train: int) -> ProxyConfig:
    """`cfg` with its batch clamped to the `n_train` training images: the trainer can hand over no more at once."""
    return cfg if cfg.batch_size <= n_train else replace(cfg, batch_size=max(1, n_train))


def peak_lr(cfg: ProxyConfig) -> float:
    """The schedule's peak learning rate: cfg.lr as given, else the optimizer's default scaled to cfg.batch_size."""
    return cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer] * cfg.batch_size / 128


def steps_per_epoch(cfg: ProxyConfig, n_train: int) -> int:
    """Optimizer steps per epoch over `n_train` images (the last partial batch is dropped)."""
    return max(1, n_train // fit_batch(cfg, n_train).batch_size)


def diverged_loss(num_classes: int) -> float:
    """The mean cross-entropy above which a training has diverged: DIVERGED_LOSS_FACTOR times guessing's."""
    return DIVERGED_LOSS_FACTOR * math.log(max(2, num_classes))


def check_proxy(p: ProxyConfig) -> None:
    """The proxy-training settings: finite and in range."""
    check_int(p.epochs, "--epochs", 1)
    check_int(p.batch_size, "--batch-size", 2)
    if p.train_subset is not None:
        check_int(p.train_subset, "--train-subset", 1)
        if p.train_subset < p.batch_size:
            raise DsearchError(f"--train-subset {p.train_subset} is smaller than one batch ({p.batch_size})")
    check_resolution(p.train_resolution, "--train-resolution")
    if p.optimizer not in OPTIMIZERS:
        raise DsearchError(f"unknown optimizer {p.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if p.lr is not None:
        check_number(p.lr, "--lr", low=0, low_open=True)
    if p.weight_decay is not None:
        check_number(p.weight_decay, "weight decay", low=0)
    check_number(p.label_smoothing, "--label-smoothing", low=0, high=1, high_open=True)
    check_number(p.bsconv_alpha, "bsconv_s alpha", low=0)
    check_seed(p.seed)


@dataclass
class TrainResult:
    val_acc: float
    test_acc: float
    history: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    epochs: int = 0
    batch_size: int = 0  # the batch used: the requested one, or the whole training split when that is smaller
    lr: float = 0.0  # the peak learning rate used
    steps_per_epoch: int = 0
    train_loss: list[float] = field(default_factory=list)  # mean training cross-entropy of each epoch
    peak_loss: float = 0.0  # the highest mean cross-entropy over one check's steps (at most 25)
    train_time_s: float = 0.0
    images_per_s: float = 0.0
    device: str = "cpu"
    state: dict[str, Tensor] | None = field(default=None, repr=False)  # trained weights, on the CPU


def select_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; or exactly what was asked for."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class DeviceData:
    """A dataset's splits as uint8 tensors on the training device, with on-device augmentation."""

    def __init__(self, data, device: torch.device, train_subset: int | None = None,
                 train_resolution: int | None = None) -> None:
        n = len(data.train_x) if train_subset is None else min(train_subset, len(data.train_x))
        self.device = device
        self.train_x, self.train_y = data.train_x[:n].to(device), data.train_y[:n].to(device)
        self.val_x, self.val_y = data.val_x.to(device), data.val_y.to(device)
        self.test_x, self.test_y = data.test_x.to(device), data.test_y.to(device)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(data.mean, device=device).view(shape) * 255
        self.std = torch.tensor(data.std, device=device).view(shape) * 255
        self.size = train_resolution or data.image_size[0]
        self.native = tuple(data.image_size) == (self.size, self.size)
        self.memory_format = memory_format(device)

    def prepare(self, x: Tensor) -> Tensor:
        """uint8 batch -> normalised float batch at the training resolution, in the device's layout."""
        x = (x.float() - self.mean) / self.std
        if not self.native:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=self.memory_format)


def random_shift_flip(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Per-image random translation by up to `pad` pixels (zero fill) and horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, x.shape[1], h, w)
    shifted = shifted.gather(3, cols)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(3), shifted)


def _optimizer(model: nn.Module, cfg: ProxyConfig) -> torch.optim.Optimizer:
    """The optimizer at peak_lr(cfg); cfg.batch_size must be the batch used (see fit_batch)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    lr = peak_lr(cfg)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    # One fused kernel per step on CPUs (3x faster than the per-tensor loop for ~100 tensors, same update).
    fused = True if decay and decay[0].device.type == "cpu" else None
    if cfg.optimizer == "sgd":
        wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, fused=fused)
    wd = 0.05 if cfg.weight_decay is None else cfg.weight_decay
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def warmup_cosine(total_steps: int, warmup_share: float = 0.15) -> Callable[[int], float]:
    """LR factor: linear warm-up over the first steps, then cosine decay to zero (any step count >= 1)."""
    warmup = max(1, int(warmup_share * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


CHANCE_P = 0.01  # an accuracy whose one-sided binomial p value against guessing is above this is "at chance"


def chance_note(acc: float, n: int, num_classes: int) -> str | None:
    """Why `acc` on `n` images says nothing (indistinguishable from guessing among `num_classes`), else None.

    One-sided exact binomial test (scipy.stats.binomtest) of the correct count against the rate 1 / num_classes.
    """
    from scipy import stats  # here: importing the trainer does not load scipy

    if n < 1 or num_classes < 2:
        return None
    chance = 1 / num_classes
    p = stats.binomtest(round(acc * n), n, chance, alternative="greater").pvalue
    if p <= CHANCE_P:
        return None
    return (f"accuracy {acc:.4f} on {n} images is indistinguishable from guessing among {num_classes} classes "
            f"({chance:.4f}; binomial p = {p:.2g}): the network learned nothing measurable")


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, data: DeviceData, batches: int, batch_size: int, seed: int = 0) -> None:
    """Replace every batch norm's running statistics by their plain average over `batches` unaugmented training batches.

    The running averages of training mix batches of weights that changed since, and of augmented images that
    evaluation never sees; after a short, fast-moving schedule they can be far from the statistics of the final
    weights on clean images.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches < 1:
        return
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts the same
        m.train()
    # Its own random stream, so that recomputing changes what is evaluated, never the training that follows.
    generator = torch.Generator(device=data.device).manual_seed(seed)
    order = torch.randperm(len(data.train_x), device=data.device, generator=generator)
    for i in range(min(batches, max(1, len(order) // batch_size))):
        with _autocast(data.device):
            model(data.prepare(data.train_x[order[i * batch_size:(i + 1) * batch_size]]))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on (x, y)."""
    model.eval()
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        with _autocast(data.device):
            logits = model(data.prepare(x[i:i + batch_size]))
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum()
    return correct.item() / max(1, len(x))


# Measured on an H100 (README, "Benchmarks"): the proxy's nets are so small that a GPU step is bound by kernel
# launches, not arithmetic. bf16 autocast and channels_last only add casts and layout kernels there, so CUDA trains
# in fp32 NCHW, and replays each training step's forward and backward as CUDA graphs (one launch each).
CUDA_BF16 = False
CUDA_GRAPHS = True


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPUs (oneDNN's fast layout); NCHW on CUDA (see CUDA_BF16)."""
    return torch.contiguous_format if device.type == "cuda" else torch.channels_last


@cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory instead of unmapping it (once per process; False if not glibc).

    A training step frees and reallocates activations of 1-20 MB. By default glibc may map such
    blocks fresh and hand them back to the system on free, and every first touch of a fresh page is a
    page fault: up to ~2,800 faults and ~7 ms of system time per step on a sampled candidate, about a
    tenth of the step (measured with getrusage on a 2-core Xeon VM). Blocks up to 32 MB (glibc's
    limit) now come from the heap, and the heap keeps up to 1 GiB of free memory for reuse.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def _autocast(device: torch.device):
    # No autocast cache: CUDA graphs capture the casts themselves.
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if device.type == "cuda" and \
        CUDA_BF16 else torch.autocast(device.type, enabled=False)


def graph_training_step(model: nn.Module, sample: Tensor) -> nn.Module:
    """`model` whose training-mode forward and backward replay as CUDA graphs (eval mode runs it plainly).

    The same parameters and the same arithmetic; torch's capture runs three warm-up steps, whose batch-norm
    statistics updates are undone so that training starts from the same state as without graphs.
    """
    # The warm-up's autograd nodes make torch warn about their stream once; the training loop never captures.
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    with _autocast(sample.device):
        graphed = torch.cuda.make_graphed_callables(model, (sample,))
    assert isinstance(graphed, nn.Module)  # a module in, the same module (its forward graphed) out
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return graphed


RegularizerTerm = tuple[Callable[[list[Any], float], Tensor], list[Any], float]  # (loss, modules, weight)


def regularizers(model: nn.Module, cfg: ProxyConfig) -> list[RegularizerTerm]:
    """(loss, modules, weight) of each registered conv kind's regulariser (ConvType.regularizer) found in `model`.

    Found once per training, not at every step; the weight is the ProxyConfig setting the regulariser names.
    """
    terms = []
    for ct in CONV_TYPES.values():
        reg = ct.regularizer
        if reg is not None:
            modules = [m for m in model.modules() if isinstance(m, reg.module)]
            if modules:
                terms.append((reg.loss, modules, getattr(cfg, reg.weight)))
    return terms


def train_proxy(
    spec: ArchSpec,
    data: DeviceData,
    cfg: ProxyConfig = ProxyConfig(),
    on_epoch: Callable[[int, float], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    deadline: Deadline | None = None,
) -> TrainResult:
    """Train `spec` for cfg.epochs; `on_epoch(epoch, val_acc)` may raise to stop (e.g. Optuna pruning).

    `progress(step, total_steps)` is called after each step (for progress bars). Raises TrainingDiverged on a
    NaN/inf loss or one that exploded (diverged_loss), and TimedOut ("stopped by --timeout 5 s after 3 of 10
    epochs") at the first step after `deadline` (the command's time limit). A batch larger than the training split
    is clamped to it (fit_batch), and the default learning rate follows the batch used.
    """
    n = len(data.train_x)
    cfg = fit_batch(cfg, n)
    device = data.device
    if device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    model = build_model(spec).to(device).to(memory_format=data.memory_format)
    specialise(model, spec.in_channels, data.size)  # same function and parameters, cheaper forms at this size
    terms = regularizers(model, cfg)  # the conv kinds' regularisers join the loss
    if device.type == "cuda" and CUDA_GRAPHS:
        model.train()
        model = graph_training_step(model, data.prepare(data.train_x[:cfg.batch_size]))
    optimizer = _optimizer(model, cfg)
    steps = steps_per_epoch(cfg, n)
    total = steps * cfg.epochs
    limit = diverged_loss(spec.num_classes)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total))
    pad = max(1, data.train_x.shape[-1] // 8)  # in native pixels: augmentation runs before resizing
    history: list[float] = []
    train_loss: list[float] = []
    peak = 0.0
    start = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        # Held per epoch, so that a latency measurement of another worker waits at most an epoch.
        with training_shared():
            model.train()
            order = torch.randperm(n, device=device, generator=generator)
            loss_sum = torch.zeros((), device=device)
            # Cross-entropy alone (regularisers left out), summed over the epoch and the steps since the last check.
            ce_sum = torch.zeros((), device=device)
            window = torch.zeros((), device=device)
            since = 0
            for i in range(steps):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                x = data.train_x[idx]
                if cfg.augment:
                    x = random_shift_flip(x, pad, generator)
                x = data.prepare(x)
                with _autocast(device):
                    ce = F.cross_entropy(model(x), data.train_y[idx], label_smoothing=cfg.label_smoothing)
                loss = ce
                for term, modules, weight in terms:
                    loss = loss + term(modules, weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach()
                window += ce.detach()
                step += 1
                since += 1
                if step % 25 == 0 or i == steps - 1:  # one host sync per check, not per step
                    ce_sum += window
                    peak = max(peak, _check_loss(loss_sum, window, since, limit, epoch, i))
                    window.zero_()
                    since = 0
                if terminated():  # a SIGTERM whose first Terminated a library swallowed (e.g. in a gc callback)
                    raise Terminated()
                check_interrupted()  # a Ctrl-C or SIGTERM that arrived inside `deferred_interrupts`
                if deadline is not None and deadline.passed():  # the user's limit holds inside one long training too
                    deadline.check(f"after {epoch} of {cfg.epochs} epochs")
                if progress is not None:
                    progress(step, total)
            train_loss.append(round(ce_sum.item() / steps, 4))
            if cfg.bn_recompute:
                recompute_bn_stats(model, data, cfg.bn_recompute, cfg.batch_size, cfg.seed)
            acc = evaluate(model, data, data.val_x, data.val_y)
            history.append(acc)
            if on_epoch is not None:
                on_epoch(epoch, acc)
    elapsed = time.perf_counter() - start
    return TrainResult(
        val_acc=history[-1], test_acc=evaluate(model, data, data.test_x, data.test_y), history=history,
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=peak_lr(cfg), steps_per_epoch=steps, train_loss=train_loss,
        peak_loss=round(peak, 4), train_time_s=elapsed, images_per_s=total * cfg.batch_size / max(elapsed, 1e-9),
        device=str(device), state={k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    )


def _check_loss(loss_sum: Tensor, window: Tensor, steps: int, limit: float, epoch: int, step: int) -> float:
    """The mean cross-entropy of the last `steps` steps; TrainingDiverged for a non-finite loss or one over `limit`."""
    total, recent = torch.stack([loss_sum, window]).tolist()
    if not math.isfinite(total):
        raise TrainingDiverged(f"loss became {total} in epoch {epoch + 1} by step {step + 1}")
    mean = recent / steps
    if mean > limit:
        raise TrainingDiverged(f"loss exploded to {mean:.4g} in epoch {epoch + 1} by step {step + 1} (over "
                               f"{limit:.3g}, {DIVERGED_LOSS_FACTOR:g}x the loss of guessing)")
    return mean
