"""Taking an architecture away: `writer` exports a standalone model.py (plus weights, TorchScript, ONNX,
torch.export) and `load` gives a study's trial as a ready module (`load_trial`)."""
from .load import load_trial
from .writer import ExportResult, check_weights_fit, export_spec, load_weights, model_source

__all__ = ["ExportResult", "check_weights_fit", "export_spec", "load_trial", "load_weights", "model_source"]
