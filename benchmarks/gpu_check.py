"""One prepared device check: the CUDA tests, sampling / likelihood / training throughput, peak memory.

    python benchmarks/gpu_check.py --device cuda          # at most ~8 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --quick   # tiny sizes, < 60 s (tests/test_gpu_check.py)

Writes ``report.md`` and ``gpu_check.json`` (every figure) under ``--out`` (default reports/gpu_check),
rewritten after every section so that a run killed at its time limit keeps what it measured. Each
section survives the failure of another (the error is recorded and the run goes on); a time budget
(``--budget`` seconds) gives each section its share of what is left, and a row whose estimated cost
would pass its section's share is skipped and listed as such.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

import gpu_throughput as tp  # noqa: E402
import gpu_training  # noqa: E402

SHARES = {"tests": 0.15, "sampling": 0.35, "likelihood": 0.3, "training": 0.15, "ddp": 0.05}
# device-agnostic tests taking the ``device`` fixture (tests/conftest.py); their time: benchmarks/README.md
DEVICE_TESTS = ["tests/test_solvers_contract.py::test_same_seed_same_samples",
                "tests/test_solvers_contract.py::test_image_shaped_batches",
                "tests/test_solvers_contract.py::test_ancestral_is_ddpm_algorithm_2_bit_for_bit",
                "tests/test_losses.py::test_losses_on_the_selected_device_match_cpu",
                "tests/test_data.py::test_batches_are_epochs_of_permutations_and_resume_exactly"]
LARGE = dict(in_channels=3, image_size=32, base_channels=128, channel_mults=(1, 2, 2, 2), blocks_per_level=4,
             attention_resolutions=(16,))  # ~53M parameters, 18 GFLOP per 32x32x3 image (DDPM++: 62M)


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: full on a GPU, or tiny with ``quick``."""

    quick: bool = False
    batches: tuple = (256, 2048)
    steps: tuple = (20, 100)
    large: dict = field(default_factory=lambda: dict(LARGE))
    points: int = 256                 # likelihood: test digits
    tol: float = 1e-5                 # likelihood: rtol = atol of ours
    ref_tol: float = 1e-7             # the float64 reference solve
    scipy_tols: tuple = (1e-5, 1e-6, 1e-7)
    train_steps: dict = field(default_factory=lambda: {"digits": (20, 220), "large": (5, 65)})
    train_images: int = 2048
    digits_batch: int = 128           # the digits config's own
    large_batch: int = 128
    ddp: int = 0                      # processes for the DDP row (the GPUs present when > 1)
    cuda_tests: tuple = ("tests",)
    device_tests: tuple = tuple(DEVICE_TESTS)


QUICK = dict(quick=True, batches=(4,), steps=(2, 3), points=4, tol=1e-3, ref_tol=1e-5, scipy_tols=(1e-3, 1e-4),
             large=dict(in_channels=3, image_size=8, base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                        attention_resolutions=(4,)),
             train_steps={"digits": (2, 42), "large": (1, 21)}, train_images=32, digits_batch=16, large_batch=8,
             cuda_tests=("tests/test_no_host_sync.py",), device_tests=tuple(DEVICE_TESTS[1:2]))


class Budget:
    """A deadline for the run; ``start(section)`` gives the section its share of the time left."""

    def __init__(self, seconds: float, sections: list[str]):
        self.deadline = time.monotonic() + seconds
        self.pending = list(sections)
        self.section_end = self.deadline

    def start(self, name: str) -> None:
        share = SHARES[name] / sum(SHARES[s] for s in self.pending)
        self.pending.remove(name)
        now = time.monotonic()
        self.section_end = now + share * max(0.0, self.deadline - now)

    def left(self) -> float:
        return max(0.0, min(self.section_end, self.deadline) - time.monotonic())

    def over(self) -> bool:
        return time.monotonic() >= self.deadline


# -- (a) the tests -------------------------------------------------------------------------------
def tests(plan: Plan, device: torch.device, budget: Budget) -> list[dict]:
    """``pytest -m cuda`` and the ``--device`` subset in subprocesses; counts from their JUnit XML."""
    rows: list[dict] = []
    runs = [("pytest -m cuda", ["-m", "cuda", *plan.cuda_tests]),
            (f"pytest --device {device}", ["--device", str(device), *plan.device_tests])]
    for label, args in runs:
        tp.guarded(rows, {"run": label}, budget, 0, lambda: _pytest(args, budget.left()))
    return rows


def _pytest(args: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
               f"--junitxml={xml}", *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        wall = time.perf_counter() - start
        if not xml.exists():
            raise RuntimeError(f"pytest exited {done.returncode} without a report: {done.stdout[-300:]}")
        suites = ET.parse(xml).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        bad = [(c, c.find("failure") if c.find("failure") is not None else c.find("error"))
               for s in suites for c in s.iter("testcase")]
        bad = [(f"{c.get('classname')}::{c.get('name')}", e.get("message", "")) for c, e in bad if e is not None]
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    return {"passed": passed, "failed": count["failures"], "errors": count["errors"], "skipped": count["skipped"],
            "wall_s": wall, "exit_code": done.returncode, "failing": ", ".join(n for n, _ in bad[:20]) or "-",
            "first_failure": bad[0][1][:300] if bad else "-"}


SECTIONS = {"tests": tests, "sampling": tp.sampling, "likelihood": tp.likelihood,
            "training": gpu_training.training, "ddp": gpu_training.ddp}


# -- the report ----------------------------------------------------------------------------------
def environment(device: torch.device, plan: Plan, budget_s: float) -> dict:
    cuda = device.type == "cuda"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            "gpus": torch.cuda.device_count() if cuda else 0, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "python": platform.python_version(), "commit": commit.stdout.strip() or None,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "budget_s": budget_s,
            "plan": {k: v for k, v in asdict(plan).items() if k not in ("cuda_tests", "device_tests")}}


def _cell(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return "-" if v is None else " ".join(str(v).replace("|", "/").split())


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU check: {env['device']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, GPUs {env['gpus']}, "
             f"TF32 matmul {env['tf32_matmul']} / cuDNN {env['tf32_cudnn']}; commit {env['commit']}; "
             f"started {env['started']}; budget {env['budget_s']:.0f} s, wall {result.get('wall_s', 0):.0f} s.",
             "Peak memory (peak_mib) is torch.cuda.max_memory_allocated over each row alone."]
    for name, sec in result["sections"].items():
        lines += ["", f"## {name}", "", f"status: {sec['status']} ({sec['seconds']:.1f} s)"]
        if sec.get("error"):
            lines += ["", "```", sec["error"], "```"]
        rows = sec.get("rows") or []
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(result))


def run(device: torch.device, plan: Plan, budget_s: float, sections: list[str], out: Path) -> dict:
    start = time.monotonic()
    budget = Budget(budget_s, sections)
    result = {"environment": environment(device, plan, budget_s), "sections": {}}
    for name in sections:
        if budget.over():
            result["sections"][name] = {"status": "skipped: past the time budget", "seconds": 0.0, "rows": []}
            continue
        budget.start(name)
        t0 = time.monotonic()
        try:
            sec = {"status": "ok", "rows": SECTIONS[name](plan, device, budget)}
        except Exception as e:  # recorded; the next section runs
            sec = {"status": f"error: {type(e).__name__}: {e}"[:300], "rows": [],
                   "error": "".join(traceback.format_exception(e)[-6:]).strip()}
        sec["seconds"] = time.monotonic() - t0
        result["sections"][name] = sec
        result["wall_s"] = time.monotonic() - start
        write(result, out)
        print(f"{name}: {sec['status']} ({sec['seconds']:.1f} s)", flush=True)
    result["wall_s"] = time.monotonic() - start
    write(result, out)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (CPU CI, < 60 s)")
    p.add_argument("--out", default="reports/gpu_check")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 420; quick 200)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--ddp", type=int, default=None, help="processes for the DDP row (default: the GPUs present)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    plan = Plan(**{**(QUICK if a.quick else {}), "ddp": a.ddp if a.ddp is not None else gpus})
    budget = a.budget if a.budget is not None else (200.0 if a.quick else 420.0)
    result = run(device, plan, budget, sections, Path(a.out))
    print(f"wrote {Path(a.out) / 'report.md'} and gpu_check.json ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
