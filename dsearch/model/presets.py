"""Named architectures as ArchSpecs, and switching every conv unit of a spec to another kind."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import DsearchError
from .archspec import ArchSpec, ConvSpec, HeadSpec, StageSpec, StemSpec
from .ops import conv_type

PRESETS: dict[str, Callable[..., ArchSpec]] = {}


def register_preset(fn: Callable[..., ArchSpec]) -> Callable[..., ArchSpec]:
    PRESETS[fn.__name__] = fn
    return fn


def preset(name: str, **kwargs: Any) -> ArchSpec:
    try:
        fn = PRESETS[name]
    except KeyError:
        raise DsearchError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None
    return fn(**kwargs)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of `divisor`, never more than 10% down (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# (expansion, channels, repeats, stride) of MobileNetV2 (Sandler et al. 2018, table 2)
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))


@register_preset
def mobilenet_v2(width: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 resolution: int = 224) -> ArchSpec:
    """MobileNetV2: inverted residual blocks whose conv unit is depthwise + BN + ReLU6 + projection."""
    dsc = ConvSpec.of("dsc", with_bn=True, activation="relu6")
    stages = tuple(
        StageSpec("inverted_residual", make_divisible(c * width), n, s, 3, float(t), dsc, "relu6", True)
        for t, c, n, s in MOBILENET_V2_STAGES
    )
    return ArchSpec(
        in_channels=in_channels, num_classes=num_classes, resolution=resolution,
        stem=StemSpec(make_divisible(32 * width), 3, 2, "relu6"), stages=stages,
        head=HeadSpec(make_divisible(1280 * max(1.0, width)), "relu6", 0.2),
        name=f"mobilenet_v2_w{width:g}",
    )


@register_preset
def resnet20(width: float = 1.0, num_classes: int = 10, in_channels: int = 3, resolution: int = 32) -> ArchSpec:
    """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks, 1x1 projection shortcuts."""
    regular = ConvSpec("regular")
    widths = [max(1, round(c * width)) for c in (16, 32, 64)]
    stages = tuple(StageSpec("basic", w, 3, s, 3, 1.0, regular, "relu", True)
                   for w, s in zip(widths, (1, 2, 2), strict=True))
    return ArchSpec(in_channels=in_channels, num_classes=num_classes, resolution=resolution,
                    stem=StemSpec(widths[0], 3, 1, "relu"), stages=stages, head=HeadSpec(0, "relu", 0.0),
                    name=f"resnet20_w{width:g}")


def with_conv(spec: ArchSpec, kind: str, **knobs: Any) -> ArchSpec:
    """Switch every conv unit of `spec` to `kind`; knobs the old kind shared with the new one carry over."""
    accepted = conv_type(kind).knob_names
    stages = []
    for st in spec.stages:
        kept = {k: v for k, v in st.conv.knobs if k in accepted}
        stages.append(dataclasses.replace(st, conv=ConvSpec(kind, tuple({**kept, **knobs}.items()))))
    return spec.replace(stages=tuple(stages), name=f"{spec.name}_{kind}" if spec.name else kind)
