"""dsearch: neural architecture search over the separable-convolution design space."""
from .cost import Cost, count_cost, spec_cost
from .export import load_trial
from .model.archspec import ArchSpec, ArchSpecError, ConvSpec, HeadSpec, StageSpec, StemSpec
from .model.builder import build_model
from .model.factory import create_model
from .model.ops import bsconv_reg_loss, make_conv
from .model.presets import preset, with_conv
from .version import __version__ as __version__

__all__ = [
    "ArchSpec", "ArchSpecError", "ConvSpec", "Cost", "HeadSpec", "StageSpec", "StemSpec", "build_model",
    "bsconv_reg_loss", "count_cost", "create_model", "load_trial", "make_conv", "preset", "spec_cost", "with_conv",
]
