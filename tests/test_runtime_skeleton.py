"""The device package must import without torch, transformers or peft."""

import subprocess
import sys


def test_runtime_imports_without_torch():
    code = (
        "import sys, edge_kto_runtime, edge_kto_runtime.cli\n"
        "bad = {'torch', 'transformers', 'peft'} & set(sys.modules)\n"
        "assert not bad, bad\n"
        "print(edge_kto_runtime.SCHEMA_VERSION)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
