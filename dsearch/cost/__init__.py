"""What an architecture costs: fvcore counts and the analytic model (`count`) and the activation memory a
resolution needs (`memory`). Latency is measured and predicted by dsearch.latency."""
from .count import (
    ZERO_COST_OPS,
    Cost,
    UncountedOpError,
    cost_table,
    count_cost,
    flop_analysis,
    fvcore_spec_cost,
    net_counts,
    spec_cost,
    stage_counts,
    unit_cost,
)
from .memory import FLOAT_BYTES, TRAINING_ACTIVATION_FACTOR, activation_bytes, check_fits_memory, free_memory

__all__ = [
    "FLOAT_BYTES", "TRAINING_ACTIVATION_FACTOR", "ZERO_COST_OPS", "Cost", "UncountedOpError", "activation_bytes",
    "check_fits_memory", "cost_table", "count_cost", "flop_analysis", "free_memory", "fvcore_spec_cost",
    "net_counts", "spec_cost", "stage_counts", "unit_cost",
]
