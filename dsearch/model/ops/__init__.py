"""The conv types of the separable-convolution design space, behind one registry."""
# Import order is registration order, which legends, colours and baselines follow.
# isort: off
from . import convs as _convs  # noqa: F401  (registers regular, dsc, bsconv_u, bsconv_s)
from . import scc as _scc  # noqa: F401  (registers scc)
from . import channelwise as _channelwise  # noqa: F401  (registers dscw, gcwconv)
from . import shuffle as _shuffle  # noqa: F401  (registers shuffle)
from . import factorized as _factorized  # noqa: F401  (registers cp, tucker)
# isort: on
from .activations import ACTIVATIONS, make_activation
from .convs import BSConvS, BSConvU, DepthwiseSeparableConv, bsconv_reg_loss, bsconv_s_mid_channels
from .registry import (
    CONV_TYPES,
    ConvConfigError,
    ConvType,
    Knob,
    Regularizer,
    check_conv,
    conv_macs,
    conv_params,
    conv_type,
    make_conv,
    register_conv,
    resolve_knobs,
)
from .scc import SCC, SlidingChannelConvOp, scc_index, scc_pointwise, scc_pointwise_macs, scc_window_starts

# Custom ops with their fvcore cost handles: every op dsearch emits must be counted.
FVCORE_HANDLES = {"dsearch::scc_pointwise": scc_pointwise_macs}

__all__ = [
    "ACTIVATIONS", "BSConvS", "BSConvU", "CONV_TYPES", "ConvConfigError", "ConvType", "DepthwiseSeparableConv",
    "FVCORE_HANDLES", "Knob", "Regularizer", "SCC", "SlidingChannelConvOp", "bsconv_reg_loss", "bsconv_s_mid_channels",
    "check_conv", "conv_macs", "conv_params", "conv_type", "make_activation", "make_conv", "register_conv",
    "resolve_knobs", "scc_index", "scc_pointwise", "scc_window_starts",
]
