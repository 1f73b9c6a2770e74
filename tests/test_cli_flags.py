"""Every scalar field of a stage's Config is reachable from the CLI (generated flags, or a named
hand-written alias); the rest (lists, mappings) come from --config YAML of the same fields."""

from __future__ import annotations

import argparse

import pytest

from edge_kto.cli import build_parser
from edge_kto.cli_flags import flag_fields
from edge_kto.export import ExportConfig
from edge_kto.finish import FinishConfig
from edge_kto.train import TrainConfig

ALIASES = {"export": {"golden_verifier": "verifier", "check": "no_check", "onnx_int8_head": "onnx_int4_head"}}


def _sub(name: str) -> argparse.ArgumentParser:
    p = build_parser()
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


@pytest.mark.parametrize("cmd,cls", [("train", TrainConfig), ("finish", FinishConfig), ("export", ExportConfig)])
def test_every_scalar_config_field_has_a_flag(cmd, cls):
    dests = {a.dest for a in _sub(cmd)._actions}
    missing = [f for f in flag_fields(cls) if ALIASES.get(cmd, {}).get(f, f) not in dests]
    assert not missing, f"{cls.__name__} fields without a flag on `edge-kto {cmd}`: {missing}"


def test_unset_flags_keep_the_config_defaults_and_given_ones_override(tmp_path):
    from edge_kto.cli_flags import given_flags

    t = _sub("train")
    a = t.parse_args(["--data", "x.jsonl", "--lr", "0.5", "--no-precompute-ref", "--gradient-checkpointing"])
    over = given_flags(a, flag_fields(TrainConfig))
    assert over == {"data": "x.jsonl", "lr": 0.5, "precompute_ref": False, "gradient_checkpointing": True}
    cfg = TrainConfig.from_dict(over)
    assert cfg.beta == TrainConfig.beta and cfg.lr == 0.5 and not cfg.precompute_ref
    f = _sub("finish").parse_args(["src", "--data", "d", "--out", "o", "--mixed"])
    assert given_flags(f, flag_fields(FinishConfig)) == {"source": "src", "data": "d", "out": "o", "mixed": True}
