"""The head's classifier kinds: what maps the C pooled features to the class logits, with its analytic cost.

`dense` is the linear layer C -> n (n = num_classes); `channelwise` is ChannelNets' convolutional classification
layer (Gao, Wang and Ji, NeurIPS 2018; dsearch.model.layers.ChannelwiseClassifier), one 1-D filter of
d = C - n + 1 weights sliding along the channels. The costs are fvcore's counts (docs/design.md, "The head").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .layers import ChannelwiseClassifier

DEFAULT_CLASSIFIER = "dense"


@dataclass(frozen=True)
class Classifier:
    """A classifier kind: `module(C, n)` builds it; `params(C, n)` and `macs(C, n)` count it as fvcore does;
    `check(C, n)` says why it cannot map C features to n classes (None: it can). `standalone` names its
    dsearch.model.layers definition that `dsearch export` copies into model.py (empty: torch's own nn.Linear)."""

    name: str
    module: Callable[[int, int], nn.Module]
    params: Callable[[int, int], int]
    macs: Callable[[int, int], int]
    check: Callable[[int, int], str | None]
    standalone: str
    doc: str


def _channelwise_check(features: int, classes: int) -> str | None:
    if classes > features:
        return (f"channelwise needs at least as many features as classes ({classes}), got {features}; widen the "
                f"head (head.channels >= {classes}) or the last stage, or use the dense classifier")
    return None


CLASSIFIERS: dict[str, Classifier] = {c.name: c for c in (
    Classifier("dense", nn.Linear, params=lambda c, n: c * n + n, macs=lambda c, n: c * n, check=lambda c, n: None,
               standalone="", doc="linear layer C -> n with bias: C n + n params, C n MACs"),
    Classifier("channelwise", ChannelwiseClassifier, params=lambda c, n: c - n + 1, macs=lambda c, n: n * (c - n + 1),
               check=_channelwise_check, standalone="ChannelwiseClassifier",
               doc="ChannelNets' convolutional classification layer: one 1-D filter of d = C - n + 1 weights along "
                   "the channels, no padding, no bias: d params, n d MACs"),
)}


def classifier_problem(name: object, features: int, classes: int) -> str | None:
    """Why `name` cannot be the classifier from `features` pooled channels to `classes` logits (None: it can)."""
    if not isinstance(name, str) or name not in CLASSIFIERS:
        return f"unknown classifier {name!r}; valid: {', '.join(CLASSIFIERS)}"
    return CLASSIFIERS[name].check(features, classes)
