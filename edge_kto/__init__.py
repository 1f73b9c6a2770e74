"""edge-kto: distil a large teacher into a small on-device student with KTO.

Stages (one module each): generate -> label -> train -> finish -> export -> check; ``edge-kto run``
chains them (edge_kto.pipeline). Layout and extension points: docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
