"""Cost of a model: MACs ("MFLOPs") and parameters at batch 1 in eval mode, as fvcore counts them.

Two ways to the same number: `count_cost` traces a built model with fvcore (the reference, and
the per-layer table of `dsearch cost`), and `spec_cost` computes it from an ArchSpec with the
analytic formulas of each conv type and block (microseconds instead of a second at 224x224,
which is what lets a search cost thousands of candidates). The tests hold the two exactly equal
on random samples of every built-in space at several resolutions.

fvcore counts one multiply-accumulate of a conv or linear layer as one flop. It also counts
batch-norm in eval mode (2 per element with affine), adaptive average pooling (1 per input
element) and upsampling. Activations, residual additions and dropout are not
multiply-accumulates: they are declared here as zero-cost, explicitly. dsearch's own custom
ops carry their fvcore handles (dsearch.model.ops.FVCORE_HANDLES). Any other op fvcore does not
know makes `count_cost` fail rather than silently count it as zero.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore's import touches the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis, flop_count_table

from ..errors import DsearchError
from ..model.archspec import ArchSpec, ConvSpec, StageSpec, StemSpec, stage_blocks
from ..model.blocks import BLOCKS, Counts, conv_bn_cost
from ..model.builder import build_model
from ..model.heads import CLASSIFIERS, DEFAULT_CLASSIFIER
from ..model.ops import CONV_TYPES, FVCORE_HANDLES
from ..model.ops.registry import out_size

# Elementwise ops with no multiply-accumulate; counted as zero on purpose.
ZERO_COST_OPS = (
    "aten::add", "aten::add_", "aten::hardtanh", "aten::hardtanh_", "aten::hardswish", "aten::hardswish_",
    "aten::silu", "aten::silu_", "aten::relu", "aten::relu_", "aten::dropout", "aten::feature_dropout",
)


class UncountedOpError(DsearchError, RuntimeError):
    """A model contains an op whose cost fvcore would silently drop."""


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    resolution: tuple[int, int]

    @property
    def mflops(self) -> float:
        """Millions of multiply-accumulates (fvcore's flop count)."""
        return self.macs / 1e6

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def describe(self) -> str:
        h, w = self.resolution
        return f"{self.mflops:.2f} MFLOPs at {h}x{w}, {self.mparams:.3f} M params"


def _input_shape(input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"input_shape must be (C, H, W) or (1, C, H, W), got {tuple(input_shape)}")
    return shape


def flop_analysis(model: nn.Module, input_shape: Sequence[int]) -> FlopCountAnalysis:
    """fvcore's analysis with dsearch's handles, on a zero input at batch 1, ready to query."""
    shape = _input_shape(input_shape)
    param = next(model.parameters(), None)
    x = torch.zeros(shape, device=param.device if param is not None else "cpu")
    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle(**FVCORE_HANDLES)
    analysis.set_op_handle(*[v for op in ZERO_COST_OPS for v in (op, None)])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


@contextlib.contextmanager
def _counting(model: nn.Module) -> Iterator[None]:
    """Eval mode (restored after), no autograd, and fvcore's warnings silenced (checked explicitly)."""
    was_training = model.training
    logger = logging.getLogger("fvcore")
    level = logger.level
    model.eval()
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        model.train(was_training)


def count_cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """fvcore MACs and used parameters of `model` on one input of `input_shape` (C, H, W)."""
    shape = _input_shape(input_shape)
    with _counting(model):
        analysis = flop_analysis(model, shape)
        macs = int(analysis.total())
        skipped = analysis.unsupported_ops()
    if skipped:
        ops = ", ".join(f"{op} (x{n})" for op, n in sorted(skipped.items()))
        raise UncountedOpError(
            f"fvcore has no cost handle for {ops}; register one in dsearch.model.ops.FVCORE_HANDLES "
            "or declare it zero-cost in dsearch.cost.count.ZERO_COST_OPS"
        )
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Cost(macs=macs, params=params, resolution=(shape[2], shape[3]))


def cost_table(model: nn.Module, input_shape: Sequence[int], max_depth: int = 3) -> str:
    """fvcore's per-module table of MACs ("#flops") and parameters."""
    with _counting(model):
        return flop_count_table(flop_analysis(model, input_shape), max_depth=max_depth)


@functools.lru_cache(maxsize=4096)
def fvcore_spec_cost(spec: ArchSpec, resolution: int | None = None) -> Cost:
    """fvcore's count of the built `spec` at `resolution` (default: the spec's deployment resolution)."""
    size = resolution or spec.resolution
    return count_cost(build_model(spec), (spec.in_channels, size, size))


def unit_cost(conv: ConvSpec, kernel: int, in_channels: int, out_channels: int, stride: int, size: int) -> Counts:
    """A conv unit's formula MACs and params (the registry's table) plus its optional inner batch-norm."""
    ct, knobs = CONV_TYPES[conv.kind], conv.knob_dict
    macs = ct.macs(in_channels, out_channels, kernel, stride, (size, size), knobs)
    params = ct.params(in_channels, out_channels, kernel, knobs)
    bn_channels, after_stride = ct.inner_bn(in_channels, out_channels, knobs)
    if bn_channels:
        at = out_size(size, kernel, stride) if after_stride else size
        macs, params = macs + 2 * bn_channels * at * at, params + 2 * bn_channels
    return macs, params


StageCounts = Callable[[StageSpec, int, int], "tuple[int, int, int] | None"]


def stage_counts(st: StageSpec, in_channels: int, size: int) -> tuple[int, int, int]:
    """(MACs, params, output size) of one stage on a size x size input, from its blocks' formulas."""
    block = BLOCKS[st.block]
    fields = {name: getattr(st, name) for name in block.fields}
    unit = functools.partial(unit_cost, st.conv, st.kernel)
    macs = params = 0
    for channels, stride, at, out in stage_blocks(in_channels, st.out_channels, st.repeats, st.stride, size):
        m, p = block.cost(channels, st.out_channels, stride, at, unit, **fields)
        macs, params, size = macs + m, params + p, out
    return macs, params, size


def net_counts(in_channels: int, num_classes: int, stem: StemSpec, stages: Sequence[StageSpec], head_channels: int,
               size: int, stage: StageCounts = stage_counts, classifier: str = DEFAULT_CLASSIFIER) -> Counts | None:
    """(MACs, params) of stem -> stages -> head at size x size; None where `stage` finds a stage invalid or the
    classifier kind cannot map the head's channels to `num_classes`."""
    macs, params = conv_bn_cost(in_channels, stem.out_channels, stem.kernel, stem.stride, size)
    size, channels = out_size(size, stem.kernel, stem.stride), stem.out_channels
    for st in stages:
        counts = stage(st, channels, size)
        if counts is None:
            return None
        macs, params, size, channels = macs + counts[0], params + counts[1], counts[2], st.out_channels
    if head_channels:
        m, p = conv_bn_cost(channels, head_channels, 1, 1, size)
        macs, params, channels = macs + m, params + p, head_channels
    kind = CLASSIFIERS[classifier]
    if kind.check(channels, num_classes) is not None:
        return None
    macs += channels * size * size + kind.macs(channels, num_classes)  # average pool, then the classifier
    return macs, params + kind.params(channels, num_classes)


@functools.lru_cache(maxsize=65536)
def spec_cost(spec: ArchSpec, resolution: int | None = None) -> Cost:
    """Cost of the architecture `spec` at `resolution` (default: its deployment resolution), from formulas.

    Equal to `fvcore_spec_cost` (tested); fvcore's rules followed here: a conv costs output positions x
    out channels x in channels per group x k^2, an eval-mode affine batch-norm 2 per element, adaptive
    average pooling 1 per input element, a linear layer in x out (bias free), the channel-wise classifier's
    Conv1d n d (dsearch.model.heads); activations, additions, flatten and dropout nothing. Params count every
    weight, bias and batch-norm affine parameter.
    """
    size = resolution or spec.resolution
    counts = net_counts(spec.in_channels, spec.num_classes, spec.stem, spec.stages, spec.head.channels, size,
                        classifier=spec.head.classifier)
    assert counts is not None  # stage_counts never refuses a stage, and a valid ArchSpec's classifier fits
    return Cost(macs=counts[0], params=counts[1], resolution=(size, size))
