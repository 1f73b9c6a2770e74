"""edge-kto: distil a large teacher into a small on-device student with KTO.

Stages (one module each, see DESIGN.md): generate -> label -> train -> export -> check.
"""

__version__ = "0.1.0"
