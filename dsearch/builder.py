"""build_model: ArchSpec -> nn.Module (stem, stages of blocks, head)."""
from __future__ import annotations

from torch import nn

from .archspec import ArchSpec
from .blocks import BLOCKS, conv_bn_act


class Net(nn.Module):
    """A network built from an ArchSpec; `spec` is kept for export and cost caching."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.stem = conv_bn_act(spec.in_channels, spec.stem.out_channels, spec.stem.kernel, spec.stem.stride,
                                spec.stem.activation)
        stages = []
        channels = spec.stem.out_channels
        for st in spec.stages:
            block = BLOCKS[st.block].build
            blocks = []
            for r in range(st.repeats):
                blocks.append(block(channels, st, st.stride if r == 0 else 1))
                channels = st.out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = []
        if spec.head.channels:
            head.append(conv_bn_act(channels, spec.head.channels, 1, 1, spec.head.activation))
            channels = spec.head.channels
        head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        if spec.head.dropout:
            head.append(nn.Dropout(spec.head.dropout))
        head.append(nn.Linear(channels, spec.num_classes))
        self.head = nn.Sequential(*head)
        _init_weights(self)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(spec: ArchSpec) -> Net:
    """The untrained network that `spec` describes."""
    return Net(spec)
