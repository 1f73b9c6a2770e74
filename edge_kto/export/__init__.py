"""Stage 4: export the trained student to device artifacts (GGUF, ONNX int4) in a verified bundle."""

from .recipe import ExportConfig, ExportResult, run_export

__all__ = ["ExportConfig", "ExportResult", "run_export"]
