"""Quantization pieces shared by finishing and export: fake quantizers bit-identical to the
shipped formats (:mod:`.fake`) and task-calibrated importance matrices (:mod:`.imatrix`)."""
