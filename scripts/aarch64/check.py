"""The on-device re-check on aarch64, under qemu: does the bundle's GGUF behave on ARM kernels as it
did at export (x86)?

    .venv/bin/python scripts/aarch64/check.py BUNDLE [--build DIR] [--out JSON] [--threads N]

Steps (each fails the run with a message when it does not hold):
1. every aarch64 build of edge_check and of the app's JNI bridge (scripts/aarch64/build.sh) is an
   aarch64 ELF file;
2. edge_check built for this x86 machine against the Python runtime's own libllama gives the
   Python device check's numbers (top-k KLD within 1e-6, the same top-1, preference and greedy ids):
   the C++ check measures what ``edge-runtime check`` measures;
3. under ``qemu-aarch64``, per CPU baseline (armv8.2-a+dotprod, armv8-a) and GGUF artifact:
   hashes verified, KLD / top-1 / preference agreement / greedy match vs the golden set, greedy
   token match with x86, task accuracy of the aarch64 answers by the golden set's verifier, the
   gate's verdict; it fails when aarch64 fails a gate x86 passes;
4. a copy of the bundle with one flipped byte in the GGUF is refused under qemu (exit 2, the file
   named), as the Python runtime refuses it on x86.

Timing under emulation means nothing and none is reported; P99 on a real board: README, "ARM".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHES = ("armv8.2-a+dotprod", "armv8-a")
EM_AARCH64 = 183


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise SystemExit(f"{path}: not an ELF file")
    return int.from_bytes(head[18:20], "little")


def llama_src() -> Path:
    """llama.cpp's source at the installed llama-cpp-python's commit (downloaded once: llama_src.sh)."""
    sh = Path(__file__).with_name("llama_src.sh")
    return Path(subprocess.run([str(sh)], check=True, capture_output=True, text=True).stdout.strip())


def native_edge_check(src: Path, out: Path) -> Path:
    """edge_check for this machine, linked against the libllama llama-cpp-python loads."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    inc = [src / "include", src / "ggml" / "include", src / "vendor"]
    cpp = ROOT / "android_demo" / "llama" / "src" / "main" / "cpp" / "edge_check.cpp"
    cmd = [
        "g++",
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        *[f"-I{i}" for i in inc],
        str(cpp),
        f"-L{lib}",
        "-lllama",
        f"-Wl,-rpath,{lib}",
        "-o",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return out


def run_edge_check(
    exe: list[str], bundle: Path, artifact: str, threads: int, limit: int
) -> tuple[int, dict | None, str]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    p = subprocess.run(
        [
            *exe,
            str(bundle),
            "--artifact",
            artifact,
            "--threads",
            str(threads),
            "--limit",
            str(limit),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    res = json.loads(out.read_text()) if out.stat().st_size else None
    out.unlink()
    return p.returncode, res, p.stderr.strip()


def golden_rows(bundle: Path, limit: int) -> list[dict]:
    from edge_kto_runtime.check import read_golden

    rows = read_golden(bundle / "golden.jsonl")
    return rows[:limit] if limit else rows


def x86_reference(bundle: Path, artifact: str, threads: int, limit: int) -> dict:
    """The Python runtime's device check (``edge-runtime check``'s function) on this machine, on the
    same golden rows, plus its greedy ids per row."""
    from edge_kto_runtime import load, open_bundle
    from edge_kto_runtime.check import Thresholds, check_artifact
    from edge_kto_runtime.verifiers import get_verifier

    man = open_bundle(bundle, verify=False).manifest
    th = Thresholds.from_dict((man.get("alignment") or {}).get("thresholds"))
    spec = (man.get("golden") or {}).get("verifier")
    golden = golden_rows(bundle, limit)
    with load(bundle, artifact=artifact, n_threads=threads, verify=False) as m:
        res = check_artifact(m, golden, get_verifier(spec) if spec else None, None, th)
        res["thresholds"] = th.__dict__
    res["greedy_ids"] = [r["greedy_ids"] for r in res["rows"]]  # the check's own greedy pass, per row
    return res


def task_accuracy(bundle: Path, artifact: str, greedy: list[list[int]], golden: list[dict], margin: float) -> dict:
    """The aarch64 answers scored like the device check scores x86 ones (the golden set's verifier),
    with the gate's paired verdict against the same references (``task_decision``)."""
    from edge_kto_runtime import load, open_bundle
    from edge_kto_runtime.check import task_decision
    from edge_kto_runtime.verifiers import get_verifier

    spec = (open_bundle(bundle, verify=False).manifest.get("golden") or {}).get("verifier")
    if not spec:
        return {"task_acc": None, "task_verdict": None}
    verify = get_verifier(spec)
    fp, exp, ok = [], [], []
    with load(bundle, artifact=artifact, verify=False) as m:
        for row, ids in zip(golden, greedy):
            if row.get("reference") is None:
                continue
            text = m.cut_at_stop(m.detokenize([t for t in ids if t not in m.eos_ids]).decode("utf-8", "replace"))
            ok.append(bool(verify(text, row["reference"])))
            fp.append(bool(verify(row["greedy_text"], row["reference"])))
            stored = row.get("exported_greedy_text")
            exp.append(fp[-1] if stored is None else bool(verify(stored, row["reference"])))
    finished = any("exported_greedy_text" in r for r in golden)
    d = task_decision(fp, exp, ok, finished, margin)
    return {"task_acc": sum(ok) / len(ok) if ok else None, "task_verdict": d["task_verdict"], "failure": d["failure"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--build", type=Path, help="scripts/aarch64/build.sh's output (default: its cache folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "aarch64_check.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N golden rows only (0: all; emulation is ~40x slower)")
    a = ap.parse_args()
    import llama_cpp

    cache = Path(os.environ.get("EDGE_KTO_CACHE", Path.home() / ".cache" / "edge-kto"))
    build = a.build or cache / "aarch64" / llama_cpp.__version__
    src = llama_src()
    sysroot = os.environ.get("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")
    bundle = a.bundle.resolve()
    from edge_kto_runtime import open_bundle

    arts = [x.path for x in open_bundle(bundle, verify=True).artifacts if x.backend == "llama.cpp"]
    report: dict = {
        "bundle": str(a.bundle),
        "golden_rows": len(golden_rows(bundle, a.limit)),
        "artifacts": {},
        "date": time.strftime("%Y-%m-%d"),
        "qemu": True,
        "note": "no ARM latency is claimed: timing under emulation means nothing",
    }
    failures: list[str] = []

    # 1. The binaries are aarch64 (the JNI bridge too, when a JDK's jni.h let build.sh make it).
    for arch in ARCHES:
        for name in ("edge_check", "libedgekto_llama.so"):
            path = build / arch / name
            if name == "edge_check" or path.exists():
                if elf_machine(path) != EM_AARCH64:
                    failures.append(f"{path}: ELF machine {elf_machine(path)}, not aarch64 ({EM_AARCH64})")
                report.setdefault("binaries", []).append(str(path.relative_to(build)))

    with tempfile.TemporaryDirectory() as tmp:
        native = native_edge_check(src, Path(tmp) / "edge_check")
        for art in arts:
            ref = x86_reference(bundle, art, a.threads, a.limit)
            golden = golden_rows(bundle, a.limit)
            entry: dict = {
                "x86_python": {
                    k: ref[k]
                    for k in (
                        "kld_mean",
                        "top1_agree",
                        "pref_agree",
                        "greedy_match",
                        "task_acc",
                        "task_acc_fp",
                        "task_verdict",
                        "passed",
                    )
                }
            }
            # 2. The C++ check on x86 measures what the Python one does.
            rc, nat, err = run_edge_check([str(native)], bundle, art, a.threads, a.limit)
            if nat is None:
                failures.append(f"native edge_check on {art}: rc {rc}: {err}")
                continue
            agree = (
                abs(nat["kld_mean"] - ref["kld_mean"]) <= 1e-6
                and nat["top1_agree"] == ref["top1_agree"]
                and nat["pref_agree"] == ref["pref_agree"]
                and [r["greedy_ids"] for r in nat["rows"]] == ref["greedy_ids"]
            )
            entry["x86_cpp"] = {
                "kld_mean": nat["kld_mean"],
                "top1_agree": nat["top1_agree"],
                "agrees_with_python": agree,
            }
            if not agree:
                failures.append(f"{art}: the C++ check disagrees with the Python one on x86: {nat} vs {ref}")
            # 3. Under qemu, per CPU baseline.
            for arch in ARCHES:
                t0 = time.perf_counter()
                rc, res, err = run_edge_check(
                    ["qemu-aarch64", "-L", sysroot, str(build / arch / "edge_check")], bundle, art, a.threads, a.limit
                )
                if res is None:
                    failures.append(f"{art} on {arch}: edge_check rc {rc}: {err}")
                    continue
                greedy = [r["greedy_ids"] for r in res["rows"]]
                same = [x == y for x, y in zip(greedy, ref["greedy_ids"])]
                task = task_accuracy(bundle, art, greedy, golden, ref["thresholds"]["task_margin"])
                acc = task["task_acc"]
                passed = res["passed"] and task["task_verdict"] in (None, "pass")
                entry[arch] = {
                    "kld_mean": res["kld_mean"],
                    "kld_p99": res["kld_p99"],
                    "top1_agree": res["top1_agree"],
                    "pref_agree": res["pref_agree"],
                    "greedy_match_golden": res["greedy_match"],
                    "greedy_match_x86": sum(same) / len(same) if same else None,
                    "task_acc": acc,
                    "task_verdict": task["task_verdict"],
                    "passed": passed,
                    "failures": res["failures"],
                    "cpu": res.get("llama_cpp_system_info"),
                    "emulated_s": round(time.perf_counter() - t0, 1),
                }
                if ref["passed"] and not passed:
                    why = res["failures"] + ([task["failure"]] if task.get("failure") else [])
                    failures.append(f"{art} on {arch}: fails the gate x86 passes: {why}")
            report["artifacts"][art] = entry

        # 4. A flipped byte is refused on aarch64.
        bad = Path(tmp) / "bad"
        shutil.copytree(bundle, bad)
        gguf = bad / arts[0]
        raw = bytearray(gguf.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        gguf.write_bytes(bytes(raw))
        p = subprocess.run(
            ["qemu-aarch64", "-L", sysroot, str(build / ARCHES[0] / "edge_check"), str(bad)],
            capture_output=True,
            text=True,
        )
        refused = p.returncode == 2 and arts[0] in p.stderr and "sha256 mismatch" in p.stderr
        report["flipped_byte_refused"] = {"aarch64": refused, "stderr": p.stderr.strip()}
        if not refused:
            failures.append(f"a flipped byte in {arts[0]} was not refused on aarch64: rc {p.returncode} {p.stderr}")

    report["failures"] = failures
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| artifact | where | KLD (top-k) | top-1 | pref | greedy = golden | greedy = x86 | task acc | gate |")
    print("|---|---|---|---|---|---|---|---|---|")

    def f(v, fmt):  # noqa: ANN001
        return "-" if v is None else format(v, fmt)

    for art, e in report["artifacts"].items():
        x = e["x86_python"]
        print(
            f"| {art} | x86 (Python runtime) | {f(x['kld_mean'], '.4f')} | {f(x['top1_agree'], '.3f')} | "
            f"{f(x['pref_agree'], '.2f')} | {f(x['greedy_match'], '.2f')} | 1.00 | {f(x['task_acc'], '.2f')} | "
            f"{'pass' if x['passed'] else 'FAIL'} |"
        )
        for arch in ARCHES:
            if arch in e:
                r = e[arch]
                print(
                    f"| {art} | aarch64 {arch} (qemu) | {f(r['kld_mean'], '.4f')} | {f(r['top1_agree'], '.3f')} | "
                    f"{f(r['pref_agree'], '.2f')} | {f(r['greedy_match_golden'], '.2f')} | "
                    f"{f(r['greedy_match_x86'], '.2f')} | {f(r['task_acc'], '.2f')} | "
                    f"{'pass' if r['passed'] else 'FAIL'} |"
                )
    print(f"flipped byte refused on aarch64: {report['flipped_byte_refused']['aarch64']}")
    print(f"wrote {a.out}")
    for msg in failures:
        print(f"FAILED: {msg}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
