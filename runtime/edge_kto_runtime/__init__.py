"""edge-kto-runtime: load an edge-kto bundle on a device and run it, without torch.

This package must never import torch, transformers or peft (a test enforces it). The
loader, generation, server, feedback log and latency harness land here (see DESIGN.md,
"Runtime"); today it holds the package skeleton and its command line.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
