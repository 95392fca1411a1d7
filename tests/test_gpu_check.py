"""benchmarks/gpu_check.py in its CPU quick mode: every section reported with finite figures, a failing
section recorded without stopping the others, and the time budget skipping what would not fit.

The figures are timings (never asserted); what is asserted is what must hold whatever the machine:
each sampler's score evaluations are steps + 1 (2 steps + 1 for Heun), samples/s = batch / wall and
NFE/s = NFE / wall, images/s = steps/s x batch, and the scipy reference's worst-case likelihood error
falls as its tolerance tightens (an error-controlled RK45's global error scales roughly like the
tolerance: 10x tighter gives ~10x smaller, at least 3x asserted), so the error column is measured
against a reference that is more accurate than the rows it judges.
"""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SECTIONS = ["tests", "sampling", "likelihood", "training", "ddp"]


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quick(gpu_check, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    # a generous budget: a loaded CI machine must not turn slow subprocesses into skipped rows
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--budget", "600"]) == 0
    return json.loads((out / "gpu_check.json").read_text()), (out / "report.md").read_text()


def _numbers(rows):
    return [v for r in rows for v in r.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.slow  # the gpu_check self-run (quick, ~45 s); only in the full run
def test_every_section_is_reported_with_finite_figures(quick):
    result, report = quick
    assert list(result["sections"]) == SECTIONS
    for name, sec in result["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("error"))
        assert f"## {name}" in report
        assert all(math.isfinite(v) for v in _numbers(sec["rows"])), name
        assert all(r["status"].startswith(("ok", "skipped")) for r in sec["rows"]), name
    assert result["environment"]["torch"] and result["wall_s"] > 0


@pytest.mark.slow  # the gpu_check self-run (quick, ~45 s); only in the full run
def test_tests_section_counts_what_pytest_ran(quick):
    runs = {r["run"]: r for r in quick[0]["sections"]["tests"]["rows"]}
    cuda, cpu = runs["pytest -m cuda"], runs["pytest --device cpu"]
    assert cuda["status"] == "ok" and cuda["skipped"] >= 11 and cuda["passed"] == cuda["failed"] == 0  # no GPU here
    assert cpu["status"] == "ok" and cpu["passed"] >= 5 and cpu["failed"] == cpu["errors"] == 0


@pytest.mark.slow  # the gpu_check self-run (quick, ~45 s); only in the full run
def test_sampling_rows_cover_every_method_with_exact_nfe(gpu_check, quick):
    rows = quick[0]["sections"]["sampling"]["rows"]
    plan = gpu_check.Plan(**gpu_check.QUICK)
    expected = {(m, s, p, b, k) for m in ("digits", "large") for s in plan.steps for p in ("float32", "bf16")
                for b in plan.batches for k in ("ancestral", "euler_maruyama", "ddim", "heun", "dpm_solver")}
    assert {(r["model"], r["steps"], r["precision"], r["batch"], r["method"]) for r in rows} == expected
    for r in rows:
        assert r["status"] == "ok" and r["nfe"] == (2 if r["method"] == "heun" else 1) * r["steps"] + 1
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["wall_s"])
        assert r["nfe_per_s"] == pytest.approx(r["nfe"] / r["wall_s"])
        assert r["peak_mib"] is None  # CUDA only


@pytest.mark.slow  # the gpu_check self-run (quick, ~45 s); only in the full run
def test_likelihood_compares_with_scipy_at_equal_worst_case_error(quick):
    rows = quick[0]["sections"]["likelihood"]["rows"]
    ours = {r["divergence"]: r for r in rows if r["approach"] == "log_likelihood"}
    assert {"hutchinson-1", "exact"} <= set(ours) and all(r["s_per_nfe"] > 0 for r in ours.values())
    for family in ("hutchinson-1", "exact"):
        scipy = [r for r in rows if r["approach"] == "scipy RK45" and r["divergence"] == family]
        assert [r["tol"] for r in scipy] == [1e-3, 1e-4]
        assert scipy[1]["worst_err_per_dim"] < scipy[0]["worst_err_per_dim"] / 3
        equal = [r for r in rows if r["approach"] == "equal worst-case error" and r["divergence"] == family]
        assert len(equal) == 1 and equal[0]["speedup"] > 0


@pytest.mark.slow  # the gpu_check self-run (quick, ~45 s); only in the full run
def test_training_rows_give_steps_and_images_per_second(quick):
    rows = {r["config"]: r for r in quick[0]["sections"]["training"]["rows"]}
    assert set(rows) == {"digits", "large"}
    for r in rows.values():
        assert r["status"] == "ok" and r["steps_per_s"] > 0
        assert r["images_per_s"] == pytest.approx(r["steps_per_s"] * r["batch"])
    ddp = quick[0]["sections"]["ddp"]["rows"]
    assert len(ddp) == 1 and ddp[0]["status"].startswith("skipped")  # one device


def test_a_failing_section_is_recorded_and_the_next_runs(gpu_check, tmp_path, monkeypatch):
    def broken(plan, device, budget):
        raise RuntimeError("the model would not load")
    monkeypatch.setitem(gpu_check.SECTIONS, "sampling", broken)
    gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--sections", "sampling,ddp"])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["sections"]["sampling"]["status"] == "error: RuntimeError: the model would not load"
    assert "the model would not load" in (tmp_path / "report.md").read_text()
    assert result["sections"]["ddp"]["status"] == "ok"


def test_past_the_budget_sections_are_skipped(gpu_check, tmp_path):
    gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--budget", "0"])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert all(s["status"] == "skipped: past the time budget" for s in result["sections"].values())


def test_a_row_over_its_share_is_skipped_not_run(gpu_check):
    import gpu_throughput as tp

    budget = gpu_check.Budget(10.0, ["sampling"])
    budget.start("sampling")
    rows, ran = [], []
    assert tp.guarded(rows, {"row": 1}, budget, 60.0, lambda: ran.append(1) or {}) is None
    assert not ran and rows[0]["status"].startswith("skipped: needs ~60 s")
    tp.guarded(rows, {"row": 2}, budget, 0.0, lambda: 1 / 0)
    assert rows[1]["status"] == "error: ZeroDivisionError: division by zero"


def test_exact_divergence_variants_are_found_from_the_allowed_values(gpu_check, monkeypatch):
    """Today: the loop and torch.func through log_likelihood's ``jacobian`` keyword. Any option, as a
    new divergence value or as a new keyword, is found from its one-line ValueError, nothing required."""
    import gpu_throughput as tp

    jacobians = {f"exact[jacobian={v}]": {"divergence": "exact", "jacobian": v} for v in ("auto", "func", "loop")}
    assert tp.exact_variants() == {"exact": {"divergence": "exact"}, **jacobians}

    def future(score_fn, sde, x, *, divergence="exact", jacobian="auto", **kwargs):
        if divergence not in ("exact", "hutchinson", "exact_func"):
            raise ValueError(f"unknown divergence {divergence!r}; allowed: exact, hutchinson, exact_func.")
        if jacobian not in ("auto", "func", "loop"):
            raise ValueError(f"unknown jacobian {jacobian!r}; allowed: auto, func, loop.")
    monkeypatch.setattr(tp, "log_likelihood", future)
    assert tp.exact_variants() == {"exact": {"divergence": "exact"}, "exact_func": {"divergence": "exact_func"},
                                   **{f"exact[jacobian={v}]": {"divergence": "exact", "jacobian": v}
                                      for v in ("auto", "func", "loop")}}
