"""Networks: the ArchSpec that describes one, the torch modules it is built from, and presets.

Bottom to top: `layers` (torch-only modules; `dsearch export` copies their source into model.py),
`ops` (the conv-type registry, knobs and analytic costs), `blocks`, `archspec`, `builder`
(ArchSpec -> nn.Module), `presets` (MobileNetV2, ResNet-20) and `factory` (`create_model`).
"""
from .archspec import ArchSpec, ArchSpecError, ConvSpec, HeadSpec, StageSpec, StemSpec
from .builder import build_model
from .factory import create_model
from .ops import CONV_TYPES, bsconv_reg_loss, make_conv
from .presets import PRESETS, preset, with_conv

__all__ = [
    "CONV_TYPES", "PRESETS", "ArchSpec", "ArchSpecError", "ConvSpec", "HeadSpec", "StageSpec", "StemSpec",
    "build_model", "bsconv_reg_loss", "create_model", "make_conv", "preset", "with_conv",
]
