"""The pipeline file is typed and checked when it loads, and each stage's cache key is exactly the
typed inputs it reads (issue 16): a typo in any section stops the run before any work, naming the
file and the key; changing a setting reruns exactly the stages that read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_kto.pipeline import PipelineConfig, plan_keys
from edge_kto.pipeline.runner import Runner, Stage
from edge_kto_runtime.errors import InvalidInput

TASK = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "capitals"


def _load(tmp_path: Path, body: str) -> PipelineConfig:
    p = tmp_path / "p.yaml"
    p.write_text(f"task: {TASK}\n{body}\n")
    return PipelineConfig.from_yaml(p)


@pytest.mark.parametrize(
    "body,where",
    [
        ("generate: {temprature: 0.5}", "generate: unknown key(s) ['temprature'] (did you mean 'temperature'?)"),
        ("generate_eval: {max_new_token: 8}", "generate_eval: unknown key(s) ['max_new_token']"),
        ("teacher: {knd: gguf}", "teacher: unknown key(s) ['knd']"),
        ("label: {student_sample: 1}", "label: unknown key(s) ['student_sample']"),
        ("train: {learning_rate: 0.1}", "train: unknown key(s) ['learning_rate']"),
        ("train: {lora: {rank: 4}}", "train: lora: unknown key(s) ['rank']"),
        ("finish: {stpes: 3}", "finish: unknown key(s) ['stpes']"),
        ("export: {ggfu: [Q4_0]}", "export: unknown key(s) ['ggfu']"),
        ("evaluate: {teachr: false}", "evaluate: unknown key(s) ['teachr']"),
        ("bench: {run: 5}", "bench: unknown key(s) ['run']"),
        ("benhc: {runs: 5}", "unknown key(s) ['benhc']"),
    ],
)
def test_a_typo_in_each_section_is_refused_at_load_naming_file_and_key(tmp_path, body, where):
    with pytest.raises(InvalidInput) as e:
        _load(tmp_path, body)
    assert str(e.value).startswith(f"{tmp_path / 'p.yaml'}: ") and where in str(e.value)


@pytest.mark.parametrize(
    "body,where",
    [
        ("generate: {temperature: hot}", "generate: temperature: expected a number, got 'hot'"),
        ("train: {batch_size: 8.5}", "train: batch_size: expected an integer"),
        ("evaluate: {teacher: 'no'}", "evaluate: teacher: expected true/false"),
        ("limit: ten", "limit: expected an integer or null"),
        ("export: {gguf: [Q4_XX]}", "export: gguf candidate 'Q4_XX': unknown type"),
        ("teacher: {kind: gguff}", "teacher: kind: one of hf, gguf, openai"),
        ("finish: {steps: 0}", "finish: invalid finish config"),
        ("train: {data: other.jsonl}", "train: data: set by the pipeline"),
        ("export: 3", "export: expected a mapping of ExportConfig fields"),
        ("label: {shared_answers: -1}", "shared_answers: must be a whole number >= 0"),
        ("augment: {per_prompt: 2, answers: judge}", "answers: must be one of teacher, shared"),
        ("augment: {per_prompt: 2, answers: shared}", "augment: answers: shared needs label: shared_answers >= 1"),
    ],
)
def test_wrong_types_values_and_pipeline_owned_fields_are_refused_at_load(tmp_path, body, where):
    with pytest.raises(InvalidInput, match=None) as e:
        _load(tmp_path, body)
    assert where in str(e.value), str(e.value)


def test_edge_kto_run_reports_a_typo_with_exit_2_before_any_work(tmp_path, capsys):
    from edge_kto.cli import main

    p = tmp_path / "p.yaml"
    p.write_text(f"task: {TASK}\nout: {tmp_path / 'out'}\ngenerate: {{temprature: 0}}\n")
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-kto: error: ") and "generate: unknown key(s) ['temprature']" in err
    assert not (tmp_path / "out").exists()


def test_a_partial_section_keeps_the_other_defaults(tmp_path):
    cfg = _load(tmp_path, "generate_eval: {max_new_tokens: 8}\ntrain: {lora: {r: 4}}")
    assert cfg.generate_eval.n == 2 and cfg.generate_eval.max_new_tokens == 8  # the pipeline's eval default n
    assert cfg.train.lora.r == 4 and cfg.train.lora.alpha == 16 and cfg.train.lr == 1e-4


def _changed(tmp_path: Path, base: str, change: str) -> set[str]:
    a = plan_keys(_load(tmp_path, base))
    b = plan_keys(_load(tmp_path, base + "\n" + change if base else change))
    return {n for n in a if a[n] != b[n]}


def test_label_eval_key_follows_generate_max_new_tokens(tmp_path):
    """label_eval samples the student with generate.max_new_tokens: changing it must rerun label_eval
    (it used to reuse a stale golden set), but not the eval split's teacher generation."""
    changed = _changed(tmp_path, "", "generate: {max_new_tokens: 17}")
    assert {"label_eval", "label", "generate"} <= changed and "generate_eval" not in changed


@pytest.mark.parametrize(
    "change,first,untouched",
    [
        ("bench: {runs: 7}", "bench", {"generate", "label", "train", "export", "evaluate"}),
        ("evaluate: {max_new_tokens: 9}", "evaluate", {"train", "export", "bench"}),
        ("export: {golden_limit: 5}", "export", {"train", "label_eval"}),
        ("label: {eval_student_samples: 3}", "label_eval", {"label", "train", "generate_eval"}),
    ],
)
def test_a_setting_reruns_the_stage_that_reads_it_and_those_after_only(tmp_path, change, first, untouched):
    changed = _changed(tmp_path, "", change)
    assert first in changed and not (changed & untouched), changed


def test_shared_answers_move_the_phrasings_from_generate_to_label_and_keep_augments_key(tmp_path):
    """``answers: shared``: the teacher does not decode the phrasings (generate's key is the plain one),
    the label stage reads them; the augment stage's key does not depend on who answers."""
    from edge_kto.pipeline.runner import plan

    plain = plan_keys(_load(tmp_path, ""))
    teacher = _load(tmp_path, "augment: {per_prompt: 2}")
    shared = _load(tmp_path, "augment: {per_prompt: 2, answers: shared}\nlabel: {shared_answers: 2}")
    deps = {s.name: s.deps for s in plan(shared)}
    assert deps["generate"] == () and deps["label"] == ("generate", "augment")
    assert {s.name: s.deps for s in plan(teacher)}["generate"] == ("augment",)
    kt, ks = plan_keys(teacher), plan_keys(shared)
    assert ks["augment"] == kt["augment"] and ks["generate"] == plain["generate"] != kt["generate"]
    assert ks["label"] != plain["label"]


def test_round_k_is_cached_whatever_number_of_rounds_follows(tmp_path):
    """Round 1 of a two-round pipeline is the one-round pipeline's round 1 (the ablation asks for both)."""
    one = plan_keys(_load(tmp_path, "rounds: {count: 1}"))
    two = plan_keys(_load(tmp_path, "rounds: {count: 2}"))
    assert one["round1"] == two["round1"] and "round2" in two
    assert one["export"] != two["export"]  # the last round is what ships


def test_an_option_added_later_keeps_the_cached_stages_while_at_its_default(tmp_path):
    """``nll_weight`` (train, rounds) came after run folders existed: at its default it is not in any
    key (so the stages cached before it stay valid); set, it reruns the stage that reads it."""
    from dataclasses import asdict

    from edge_kto.pipeline.runner import key_material, plan

    base = _load(tmp_path, "rounds: {count: 1}")
    train = next(s for s in plan(base) if s.name == "train")
    mat = key_material(train.inputs)
    assert "nll_weight" not in json.dumps(mat)
    assert {k: v for k, v in asdict(train.inputs.train).items() if k != "nll_weight"} == mat["train"]
    keys = plan_keys(base)
    assert plan_keys(_load(tmp_path, "rounds: {count: 1, nll_weight: 0.5}"))["train"] == keys["train"]
    assert plan_keys(_load(tmp_path, "rounds: {count: 1, nll_weight: 0.5}"))["round1"] != keys["round1"]
    assert plan_keys(_load(tmp_path, "train: {nll_weight: 0.5}\nrounds: {count: 1}"))["train"] != keys["train"]


def test_the_task_folder_is_keyed_by_content_not_by_path(tmp_path):
    import shutil

    copy = tmp_path / "elsewhere" / "capitals"
    shutil.copytree(TASK, copy)
    a = plan_keys(_load(tmp_path, ""))
    p = tmp_path / "q.yaml"
    p.write_text(f"task: {copy}\n")
    assert plan_keys(PipelineConfig.from_yaml(p)) == a
    (copy / "eval.jsonl").write_text((copy / "eval.jsonl").read_text() + "\n")
    assert plan_keys(PipelineConfig.from_yaml(p))["generate"] != a["generate"]


@dataclass(frozen=True)
class _Inputs:
    x: int


def test_the_runner_reruns_a_stage_only_when_its_inputs_change(tmp_path):
    calls: list[int] = []

    def fn(inp: _Inputs, d: Path, deps: dict, progress: bool) -> dict:
        calls.append(inp.x)
        return {"x": inp.x}

    for x in (1, 1, 2, 1):
        Runner(tmp_path).run(Stage("s", _Inputs(x), (), fn))
    assert calls == [1, 2]  # the second 1 and the last 1 were cached
    done = sorted(json.loads(p.read_text())["result"]["x"] for p in tmp_path.glob("stages/s-*/done.json"))
    assert done == [1, 2]


def test_a_missing_task_folder_is_refused_at_load(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(f"task: {tmp_path / 'no-task'}\n")
    with pytest.raises(FileNotFoundError, match=r"no-task/task\.json: no such file"):
        PipelineConfig.from_yaml(p)


def test_edge_kto_run_task_runs_the_same_file_on_another_task_folder(tmp_path, capsys):
    """``--task`` swaps the task folder and nothing else: the task-reading stages get new keys, a
    missing folder is refused with its file named before any work."""
    from edge_kto.cli import main

    demo = Path(__file__).resolve().parent.parent / "edge_kto" / "pipelines" / "demo.yaml"
    assert main(["run", str(demo), "--out", str(tmp_path / "a"), "--plan"]) == 0
    own = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines())
    assert main(["run", str(demo), "--task", str(TASK), "--out", str(tmp_path / "b"), "--plan"]) == 0
    other = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines())
    assert own.keys() == other.keys() and all(own[k] != other[k] for k in ("generate", "label_eval", "export"))
    assert main(["run", str(demo), "--task", str(tmp_path / "none"), "--plan"]) == 2
    assert "none/task.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_extends_starts_from_another_pipeline_file_and_merges_key_by_key(tmp_path):
    """A variant file names only what it changes; nested keys merge (train.lora.r keeps lora.alpha)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        f"task: {TASK}\nname: base\ntrain: {{lr: 0.001, beta: 0.2, lora: {{r: 4, alpha: 8}}}}\n"
        "export: {gguf: [Q4_0, Q8_0]}\n"
    )
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: ../base.yaml\ntrain: {beta: 0.5, lora: {r: 16}}\nexport: {gguf: [Q8_0]}\n")
    cfg = PipelineConfig.from_yaml(child)
    assert (cfg.name, cfg.train.lr, cfg.train.beta) == ("base", 0.001, 0.5)
    assert (cfg.train.lora.r, cfg.train.lora.alpha) == (16, 8)
    assert cfg.export.gguf == ["Q8_0"]  # lists replace
    (tmp_path / "base.yaml").write_text("extends: sub/child.yaml\n")
    with pytest.raises(InvalidInput, match="a cycle"):
        PipelineConfig.from_yaml(child)
    child.write_text("extends: ../missing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: no such pipeline file \(extended by .*child\.yaml\)"):
        PipelineConfig.from_yaml(child)


def test_the_feedback_pipeline_is_the_demo_plus_a_device_round():
    """demo_feedback.yaml shares every stage up to training with demo.yaml (one cache serves both)."""
    root = Path(__file__).resolve().parent.parent / "edge_kto" / "pipelines"
    demo, fb = PipelineConfig.from_yaml(root / "demo.yaml"), PipelineConfig.from_yaml(root / "demo_feedback.yaml")
    assert (fb.rounds.count, fb.rounds.source) == (1, "device") and demo.rounds.count == 0
    a, b = plan_keys(demo), plan_keys(fb)
    assert all(a[s] == b[s] for s in ("generate", "generate_eval", "label", "label_eval", "train"))
    assert "round1" in b and a["export"] != b["export"]


def test_a_round_of_one_label_is_refused_with_the_fix_named():
    """``teacher_fraction: 0`` (the default) trains on the student's own rows only; when they are all one
    label the round stops before training and says which settings give both."""
    from edge_kto.pipeline.rounds import _both_classes

    _both_classes([{"label": True}, {"label": False}], 1)
    for rows, what in (([{"label": False}] * 3, "3 rows, all undesirable"), ([], "no labelled rows")):
        with pytest.raises(InvalidInput, match=f"round2: {what}.*teacher_fraction > 0"):
            _both_classes(rows, 2)


def test_part_of_the_pipeline_runs_with_every_stage_it_reads(tmp_path):
    """A benchmark that wants the labels gets ``augment`` too when it is on: the stages a part of the
    pipeline needs come from the plan's dependencies, never from a list of names kept by hand."""
    from edge_kto.pipeline.runner import stages_needed

    names = [s.name for s in stages_needed(_load(tmp_path, "augment: {per_prompt: 2}"), {"label"})]
    assert names == ["augment", "generate", "label"]
    assert [s.name for s in stages_needed(_load(tmp_path, ""), {"label"})] == ["generate", "label"]
    with_rounds = [s.name for s in stages_needed(_load(tmp_path, "rounds: {count: 1}"), {"round1"})]
    assert with_rounds[-1] == "round1" and "train" in with_rounds and "export" not in with_rounds
    with pytest.raises(ValueError, match="no stage named \\['trian'\\]"):
        stages_needed(_load(tmp_path, ""), {"trian"})
