"""One error policy for both CLIs (edge_kto_runtime.errors): bad input -> 2 with one line, an
external tool or service failing -> 1 with its message, the gate failing -> 3, Ctrl-C -> 130, and a
bug -> its traceback (a plain ValueError is not dressed up as the user's mistake)."""

from __future__ import annotations

import pytest
from conftest import free_port

from edge_kto.cli import main as kto_main
from edge_kto_runtime.cli import main as rt_main
from edge_kto_runtime.errors import GateFailed, InvalidInput, MissingInput, ToolError, UserError, exit_code_for


def test_exit_code_for_each_class():
    assert exit_code_for(InvalidInput("x")) == exit_code_for(MissingInput(2, "no", "f")) == UserError.exit_code == 2
    assert exit_code_for(ToolError("x")) == 1 and exit_code_for(GateFailed("x")) == 3
    assert exit_code_for(FileNotFoundError(2, "No such file", "typo.jsonl")) == 2  # a path the user gave
    assert exit_code_for(ValueError("bug")) is None and exit_code_for(KeyError("bug")) is None


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert rt_main(["verify", str(tmp_path / "nope")]) == 2
    assert kto_main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert rt_main(["check", str(tmp_path), "--threshold", "kld=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[0].startswith("edge-runtime: error: ") and err[1].startswith("edge-kto: error: ")
    assert "Traceback" not in "".join(err)


@pytest.mark.integration
def test_a_tool_failure_exits_1_with_the_tools_message(tmp_path, tiny_model_dir, monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    assert rt_main(["bench", "--url", url, "--runs", "1", "--warmup", "0", "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err.startswith(f"edge-runtime: failed: {url}")
    conv = tmp_path / "llama"
    conv.mkdir()
    (conv / "convert_hf_to_gguf.py").write_text(
        "import sys\nprint('converter exploded', file=sys.stderr)\nsys.exit(7)\n"
    )
    monkeypatch.setenv("EDGE_KTO_LLAMA_CPP_DIR", str(conv))
    assert (
        kto_main(
            [
                "export",
                str(tiny_model_dir),
                "--out",
                str(tmp_path / "bundle"),
                "--gguf",
                "Q8_0",
                "--no-onnx",
                "--no-check",
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("edge-kto: failed: llama.cpp convert_hf_to_gguf.py failed") and "converter exploded" in err


@pytest.mark.integration
def test_a_failed_gate_exits_3_on_both_sides(tiny_bundle, tiny_model_dir, tmp_path, capsys):
    art = "model-q8_0.gguf"
    assert rt_main(["check", str(tiny_bundle), "--artifact", art, "--threshold", "kld_mean_max=-1"]) == 3
    th = tmp_path / "t.yaml"
    th.write_text("kld_mean_max: -1\n")
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)  # edge-kto check writes its results into the manifest
    assert (
        kto_main(
            ["check", str(b), "--reference", str(tiny_model_dir), "--artifact", art, "--thresholds", str(th), "--quiet"]
        )
        == 3
    )


@pytest.mark.parametrize(
    "main,module,cmd,argv",
    [
        (rt_main, "edge_kto_runtime.cli", "cmd_verify", ["verify", "x"]),
        (kto_main, "edge_kto.cli", "cmd_models_list", ["models", "list"]),
    ],
)
def test_a_bug_shows_its_traceback_and_ctrl_c_exits_130(monkeypatch, capsys, main, module, cmd, argv):
    import importlib

    mod = importlib.import_module(module)

    def bug(a):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(mod, cmd, bug)
    with pytest.raises(ValueError, match="internal invariant"):
        main(argv)

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, cmd, interrupted)
    assert main(argv) == 130


@pytest.mark.parametrize("main,prog", [(rt_main, "edge-kto-runtime"), (kto_main, "edge-kto")])
def test_version_quiet_and_verbose_on_both(main, prog, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(prog + " ")
    sub = ["feedback", "stats", "--help"] if main is rt_main else ["models", "list", "--help"]
    with pytest.raises(SystemExit):
        main(sub)
    out = capsys.readouterr().out
    assert "--quiet" in out and "--verbose" in out
