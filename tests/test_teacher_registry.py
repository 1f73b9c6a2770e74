"""Extension point: a teacher backend is one class plus one line in TEACHERS; `edge-kto generate
--kind NAME`, pipeline validation and the resume checks then take it like a built-in one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_kto.cli import main
from edge_kto.teacher.base import TEACHERS, GenRequest, SamplingParams, Teacher, TeacherConfig

TASK = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "capitals"


class EchoTeacher(Teacher):
    """Answers with the last user turn, reversed, and the sample index."""

    def __init__(self, cfg: TeacherConfig):
        self.name = cfg.display_name()

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        return [[f"{r.messages[-1]['content'][::-1]} #{i}" for i in r.sample_indices] for r in requests]


@pytest.fixture
def echo_registered():
    TEACHERS["echo"] = "test_teacher_registry:EchoTeacher"  # the one line
    yield
    TEACHERS.pop("echo")


def test_a_teacher_registered_in_one_line_runs_edge_kto_generate(echo_registered, tmp_path):
    out = tmp_path / "c.jsonl"
    assert (
        main(
            [
                "generate",
                str(TASK),
                "--kind",
                "echo",
                "--model",
                "none",
                "-n",
                "2",
                "--limit",
                "3",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["completion"].endswith("#0") and rows[1]["completion"].endswith("#1")
    assert rows[0]["source"] == "teacher:echo:none"


def test_an_unknown_teacher_kind_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="kind: one of hf, gguf, openai, got 'echo'"):
        TeacherConfig(kind="echo").validate()
    with pytest.raises(SystemExit):  # not a --kind choice
        main(["generate", str(TASK), "--kind", "echo", "--out", str(tmp_path / "c.jsonl")])
