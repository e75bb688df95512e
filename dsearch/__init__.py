"""dsearch: neural architecture search over the separable-convolution design space."""
from .archspec import ArchSpec, ArchSpecError, ConvSpec, HeadSpec, StageSpec, StemSpec
from .builder import build_model
from .cost import Cost, count_cost, spec_cost
from .factory import create_model, load_trial
from .ops import bsconv_reg_loss, make_conv
from .presets import preset, with_conv

__version__ = "0.1.0"

__all__ = [
    "ArchSpec", "ArchSpecError", "ConvSpec", "Cost", "HeadSpec", "StageSpec", "StemSpec", "build_model",
    "bsconv_reg_loss", "count_cost", "create_model", "load_trial", "make_conv", "preset", "spec_cost", "with_conv",
]
