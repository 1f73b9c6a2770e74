"""Hostile bundles: manifest edits (integrity root), symlinks, zip bombs and smuggled entries,
replaced zips, concurrent first loads, wrong manifest types, failed artifacts, foreign prefix
states. Issue 15 items 2, 10, 11, 12 and the low ones on bundles."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import warnings
import zipfile
from pathlib import Path

import pytest

from edge_kto_runtime.bundle import BundleError, manifest_digest, open_bundle
from edge_kto_runtime.bundle_zip import safe_extract, zip_bundle
from edge_kto_runtime.cli import main as runtime_main

pytestmark = pytest.mark.integration

ART = "model-q8_0.gguf"


def _small(tiny_bundle: Path, dst: Path) -> Path:
    """A copy of the tiny bundle with one GGUF artifact (fast to zip and hash)."""
    dst.mkdir()
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["path"] == ART]
    for rel in (ART, m["golden"]["path"]):
        shutil.copy2(tiny_bundle / rel, dst / rel)
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))
    return dst


def _edit(b: Path, fn) -> None:
    m = json.loads((b / "manifest.json").read_text())
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


def test_manifest_digest_is_the_integrity_root(tiny_bundle, tmp_path, capsys):
    b = _small(tiny_bundle, tmp_path / "b")
    digest = manifest_digest(b)
    assert open_bundle(b, expect_digest=digest.upper()).root == b
    assert runtime_main(["verify", str(b), "--expect", digest]) == 0
    assert digest in capsys.readouterr().out
    _edit(
        b, lambda m: m["tokenizer"].update(chat_template="{{ messages[0]['content'] }}")
    )  # hashes of files still fine
    assert open_bundle(b).manifest["tokenizer"]["chat_template"].startswith("{{")
    with pytest.raises(BundleError, match="manifest digest"):
        open_bundle(b, expect_digest=digest)
    assert runtime_main(["verify", str(b), "--expect", digest]) == 2


def test_symlinks_in_folder_bundles_are_refused(tiny_bundle, tmp_path):
    b = _small(tiny_bundle, tmp_path / "b")
    outside = tmp_path / "outside.gguf"
    shutil.move(b / ART, outside)
    (b / ART).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        open_bundle(b)
    with pytest.raises(BundleError, match="symbolic link"):
        zip_bundle(b, tmp_path / "b.zip")


def test_onnx_folder_with_an_unlisted_or_linked_file_is_refused(tiny_bundle, tmp_path):
    b = tmp_path / "full"
    shutil.copytree(tiny_bundle, b)
    onnx = next(a for a in json.loads((b / "manifest.json").read_text())["artifacts"] if "files" in a)
    (b / onnx["path"] / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="not listed"):
        open_bundle(b)


def _bomb(tiny_bundle: Path, tmp_path: Path, payload_bytes: int) -> Path:
    b = _small(tiny_bundle, tmp_path / "src")
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(b.iterdir()):
            zf.write(p, p.name)
        zf.writestr("padding.bin", b"\0" * payload_bytes)  # not in the manifest
    return z


def test_zip_extraction_writes_only_listed_files_of_their_listed_size(tiny_bundle, tmp_path):
    z = _bomb(tiny_bundle, tmp_path, 50 << 20)
    assert z.stat().st_size < 20 << 20  # 50 MB of zeros deflate to little
    out = safe_extract(z, tmp_path / "x")
    assert not (out / "padding.bin").exists()
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < (tmp_path / "src" / ART).stat().st_size + (
        1 << 20
    )

    lying = tmp_path / "lying.zip"  # an entry that unpacks to more than the manifest lists
    with zipfile.ZipFile(lying, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted((tmp_path / "src").iterdir()):
            zf.writestr(p.name, p.read_bytes() + (b"\0" * (10 << 20) if p.name == ART else b""))
    with pytest.raises(BundleError, match="unpacks to"):
        safe_extract(lying, tmp_path / "lying")
    assert not (tmp_path / "lying").exists() and not list(tmp_path.glob(".lying.*"))


def test_a_replaced_zip_is_extracted_again(tiny_bundle, tmp_path):
    b = _small(tiny_bundle, tmp_path / "b")
    z = zip_bundle(b, tmp_path / "student.zip")
    first = open_bundle(z)
    _edit(b, lambda m: m.update(name="second-version"))
    shutil.copy2(zip_bundle(b, tmp_path / "v2.zip"), z)
    assert open_bundle(z).manifest["name"] == "second-version"
    assert first.root == tmp_path / "student.zip.extracted"


def test_loading_a_zip_never_removes_what_it_did_not_extract(tiny_bundle, tmp_path, capsys):
    """Issue 37.1: `photos/` beside `photos.zip`, a plain file `notes` beside `notes.zip`, the bundle
    folder `export --zip` leaves beside `student.zip`: all stay byte for byte."""
    b = _small(tiny_bundle, tmp_path / "b")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    (tmp_path / "notes").write_text("keep me")
    for name in ("photos", "notes"):
        z = zip_bundle(b, tmp_path / f"{name}.zip")
        assert runtime_main(["verify", str(z)]) == 0
        assert open_bundle(z).root == tmp_path / f"{name}.zip.extracted"
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"x"
    assert (tmp_path / "notes").read_text() == "keep me"
    # the export's own folder beside its zip, with an operator's file in it
    z = zip_bundle(b, tmp_path / "b.zip")
    (b / "operator.txt").write_text("mine")
    assert open_bundle(z).root == tmp_path / "b.zip.extracted"
    assert (b / "operator.txt").read_text() == "mine" and (b / ART).is_file()


@pytest.mark.parametrize("kind", ["folder", "file", "symlink"])
def test_an_extraction_target_the_loader_did_not_make_is_refused_by_name(tiny_bundle, tmp_path, capsys, kind):
    b = _small(tiny_bundle, tmp_path / "b")
    z = zip_bundle(b, tmp_path / "s.zip")
    target = tmp_path / "s.zip.extracted"
    if kind == "folder":
        target.mkdir()
        (target / "manifest.json").write_text("{}")  # looks like a bundle, has no extraction stamp
    elif kind == "file":
        target.write_text("a user's file")
    else:
        target.symlink_to(b, target_is_directory=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BundleError, match="was not extracted from s.zip; refusing"):
        open_bundle(z)
    assert runtime_main(["verify", str(z)]) == 2
    assert str(target) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing removed, no debris
    assert open_bundle(z, extract_to=tmp_path / "elsewhere").root == tmp_path / "elsewhere"


def test_concurrent_first_loads_of_one_zip_all_succeed(tiny_bundle, tmp_path):
    z = zip_bundle(_small(tiny_bundle, tmp_path / "b"), tmp_path / "c.zip")
    errors, names = [], []

    def one() -> None:
        try:
            names.append(open_bundle(z).manifest["name"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=one) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(names) == 6
    assert not list(tmp_path.glob(".c.*"))  # no extraction debris


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda m: m["tokenizer"].update(eos=5), "tokenizer.eos"),
        (lambda m: m["tokenizer"].update(stop="</s>"), "tokenizer.stop"),
        (lambda m: m["tokenizer"].update(eos_ids=["2"]), "tokenizer.eos_ids"),
        (lambda m: m.update(generation="fast"), "generation"),
        (lambda m: m["generation"].update(n_ctx="2048"), "generation.n_ctx"),
        (lambda m: m["artifacts"][0].update(bytes="12"), "artifacts[0]"),
        (lambda m: m.update(alignment=[]), "alignment"),
    ],
)
def test_wrong_manifest_types_are_a_bundle_error_naming_the_field(tiny_bundle, tmp_path, edit, field):
    b = _small(tiny_bundle, tmp_path / "b")
    _edit(b, edit)
    with pytest.raises(BundleError, match=re.escape(f"field '{field}")):
        open_bundle(b, verify=False)


def test_an_upper_case_sha256_is_not_reported_as_modified(tiny_bundle, tmp_path):
    b = _small(tiny_bundle, tmp_path / "b")
    _edit(b, lambda m: m["artifacts"][0].update(sha256=m["artifacts"][0]["sha256"].upper()))
    open_bundle(b)


def _failed(tiny_bundle: Path, tmp_path: Path) -> Path:
    b = _small(tiny_bundle, tmp_path / "failed")
    _edit(
        b,
        lambda m: m.update(
            alignment={
                "passed": False,
                "per_artifact": {ART: {"passed": False, "failures": ["task_retention 0.700 < 0.97"]}},
            }
        ),
    )
    return b


def test_a_failed_artifact_warns_on_load_and_is_refused_when_a_pass_is_required(tiny_bundle, tmp_path):
    pytest.importorskip("llama_cpp")
    from edge_kto_runtime import load
    from edge_kto_runtime.model import FailedArtifact

    b = _failed(tiny_bundle, tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load(b, n_threads=1).close()
    assert any("FAILED the export's alignment gate" in str(x.message) for x in w)
    with pytest.raises(FailedArtifact, match="task_retention"):
        load(b, require_passed=True)


def test_serve_refuses_a_failed_artifact_unless_allowed(tiny_bundle, tmp_path):
    pytest.importorskip("llama_cpp")
    b = _failed(tiny_bundle, tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "edge_kto_runtime.cli", "serve", str(b), "--port", "0", "--no-feedback"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "FAILED the export's alignment gate" in r.stderr and "--allow-failed" in r.stderr


def test_a_failed_artifact_served_anyway_tells_every_client_on_health(tiny_bundle, tmp_path):
    """``--allow-failed``: /health says the gate failed (was: a plain "ok")."""
    pytest.importorskip("llama_cpp")
    import httpx
    from conftest import free_port

    from edge_kto_runtime import load
    from edge_kto_runtime.serve import ServeConfig, serve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load(_failed(tiny_bundle, tmp_path), n_threads=1)
    srv = serve(m, ServeConfig(port=free_port()))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        health = httpx.get(f"http://127.0.0.1:{srv.server_address[1]}/health").json()
        assert health["gate"] == "failed" and health["status"].startswith("degraded")
    finally:
        srv.shutdown()
        srv.server_close()
        m.close()
    with load(tiny_bundle, artifact=ART, n_threads=1) as ok:
        assert ok.info()["gate"] in ("passed", "not run")


def test_prefix_state_is_not_a_pickle_and_belongs_to_one_model_and_prompt(tiny_bundle, tmp_path):
    pytest.importorskip("llama_cpp")
    import pickle

    from edge_kto_runtime import load

    with load(tiny_bundle, artifact=ART, n_threads=1) as m:
        ids = m.encode("You are a helpful assistant.")
        state = tmp_path / "p.state"
        m.backend.save_prefix(ids, state, key="A")
        assert m.backend.load_prefix(state, key="A") == len(ids)
        with pytest.raises(ValueError, match="another model or prompt"):
            m.backend.load_prefix(state, key="B")
        evil = tmp_path / "evil.state"
        evil.write_bytes(pickle.dumps({"x": 1}))
        with pytest.raises(ValueError, match="not a prefix state"):
            m.backend.load_prefix(evil, key="A")
        # A damaged payload under the right key never reaches llama.cpp's parser (it crashed, or tried to
        # allocate 1 TiB): a flipped byte in the state, a huge n_tokens, a cut file.
        import numpy as np

        good = dict(np.load(state, allow_pickle=False))
        for name, edit, match in (
            ("flipped", lambda d: d["llama_state"].__setitem__(100, d["llama_state"][100] ^ 1), "damaged"),
            ("huge", lambda d: d.update(n_tokens=np.array(1 << 40)), "damaged"),
            ("no digest", lambda d: d.pop("digest"), "not a prefix state"),
        ):
            d = {k: v.copy() for k, v in good.items()}
            edit(d)
            bad = tmp_path / f"{name}.state"
            with open(bad, "wb") as f:
                np.savez(f, **d)
            with pytest.raises(ValueError, match=match):
                m.backend.load_prefix(bad, key="A")
        cut = tmp_path / "cut.state"
        cut.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        with pytest.raises(ValueError, match="not a prefix state"):
            m.backend.load_prefix(cut, key="A")
        assert m.backend.load_prefix(state, key="A") == len(ids)  # the intact one still loads


def test_folder_bundle_named_dot_serves_feedback_next_to_it(tiny_bundle, tmp_path):
    from edge_kto_runtime.cli import _default_db

    b = _small(tiny_bundle, tmp_path / "here")
    assert Path(_default_db(str(b) + "/.")) == tmp_path / "here-feedback.sqlite"


def test_load_picks_and_verifies_the_artifact_from_one_manifest_read(tiny_bundle, monkeypatch):
    """A manifest swapped between two reads could pick one artifact and verify another: read it once."""
    pytest.importorskip("llama_cpp")
    import edge_kto_runtime.model as model_mod

    reads = []
    real = model_mod.open_bundle
    monkeypatch.setattr(model_mod, "open_bundle", lambda *a, **k: reads.append(a) or real(*a, **k))
    model_mod.load(tiny_bundle, artifact=ART, n_threads=1).close()
    assert len(reads) == 1


def test_the_loaded_gguf_is_the_verified_one_even_if_replaced_in_between(tiny_bundle, tmp_path, monkeypatch):
    """Issue 37.5: the artifact was hashed by path, then reopened by path; a swap in between loaded
    unverified bytes. Now the backend maps the file descriptor that was hashed."""
    pytest.importorskip("llama_cpp")
    from edge_kto_runtime import load
    from edge_kto_runtime.backends import BACKENDS

    b = _small(tiny_bundle, tmp_path / "b")
    with load(b, artifact=ART, n_threads=1) as m:
        want = list(m.generate_ids(m.encode("Hello"), max_new_tokens=4, temperature=0.0))
    spec_cls = type(BACKENDS["llama.cpp"])
    real_open = spec_cls.open

    def swap_then_open(self, path, *a, **k):  # the attacker's moment: after the hash, before the load
        (b / ART).unlink()
        (b / ART).write_bytes(b"GGUF" + b"\0" * 64)  # a file llama.cpp cannot load, same name
        return real_open(self, path, *a, **k)

    monkeypatch.setattr(spec_cls, "open", swap_then_open)
    with load(b, artifact=ART, n_threads=1) as m:
        assert list(m.generate_ids(m.encode("Hello"), max_new_tokens=4, temperature=0.0)) == want


def test_fuzzed_prefix_states_are_refused_or_loaded_never_a_crash(tiny_bundle, tmp_path):
    """Hypothesis over a real saved prefix state: flipped bytes anywhere and cuts anywhere give ValueError
    (refused, then rebuilt by the bench) or a clean load, never another exception or an allocation."""
    pytest.importorskip("llama_cpp")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from edge_kto_runtime import load

    with load(tiny_bundle, artifact=ART, n_threads=1) as m:
        ids = m.encode("You are a helpful assistant.")
        good = tmp_path / "p.state"
        m.backend.save_prefix(ids, good, key="A")
        raw = good.read_bytes()

        @settings(max_examples=40, deadline=None)
        @given(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=4), st.integers(0, 3))
        def fuzz(flips, cut):
            data = bytearray(raw)
            for pos, val in flips:
                data[pos] = val
            bad = tmp_path / "bad.state"
            bad.write_bytes(bytes(data[: len(data) - cut * len(data) // 4]))
            try:
                m.backend.load_prefix(bad, key="A")
            except ValueError:
                pass

        fuzz()
        assert m.backend.load_prefix(good, key="A") == len(ids)
