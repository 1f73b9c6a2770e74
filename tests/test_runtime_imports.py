"""The device package must import without torch, transformers or peft — every module of it."""

import subprocess
import sys


def test_runtime_imports_without_torch():
    code = (
        "import sys, edge_kto_runtime, edge_kto_runtime.cli, edge_kto_runtime.model, edge_kto_runtime.check\n"
        "import edge_kto_runtime.chat, edge_kto_runtime.verifiers, edge_kto_runtime.bundle\n"
        "import edge_kto_runtime.backends.llamacpp, edge_kto_runtime.backends.onnx\n"
        "bad = {'torch', 'transformers', 'peft'} & set(sys.modules)\n"
        "assert not bad, bad\n"
        "print(edge_kto_runtime.SCHEMA_VERSION)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
