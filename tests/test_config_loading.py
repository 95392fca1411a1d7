"""The loader gives what the hand-written one gave: every shipped config, the override combinations
of the tests and README, and the one-line message of each bad input, field by field against the
snapshot in tests/data/configs/ (written once by the old loader; see snapshot.py there)."""

import json
from pathlib import Path

import pytest

from sde_diffusion.training.config import from_dict, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
SNAP = ROOT / "tests" / "data" / "configs"
LOADS = json.loads((SNAP / "overrides.json").read_text())
ERRORS = json.loads((SNAP / "errors.json").read_text())


def assert_same_fields(got: dict, want: dict) -> None:
    """Equal value and equal type (1 is not 1.0, [1] is not (1,)) for every section.key."""
    assert got.keys() == want.keys()
    for sec in want:
        assert got[sec].keys() == want[sec].keys(), sec
        for key, w in want[sec].items():
            g = got[sec][key]
            assert json.dumps(g) == json.dumps(w) and type(g) is type(w), f"{sec}.{key}: {g!r} vs {w!r}"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_as_before(path):
    cfg = load_config(path)
    assert_same_fields(to_dict(cfg), json.loads((SNAP / f"{path.stem}.json").read_text()))
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg  # through the checkpoint's config.json


@pytest.mark.parametrize("case", LOADS, ids=lambda c: f"{c['config']}:{' '.join(c['overrides'])[:40]}")
def test_overrides_load_as_before(case):
    path = ROOT / "configs" / f"{case['config']}.yaml" if case["config"] else None
    assert_same_fields(to_dict(load_config(path, case["overrides"])), case["result"])


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: " ".join(c["overrides"]) or next(iter(c["files"]), "none"))
def test_bad_input_gets_the_same_message(case, tmp_path):
    for name, text in case["files"].items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text.replace("{root}", str(ROOT)))
    with pytest.raises(ValueError) as e:
        load_config(tmp_path / case["config"] if case["config"] else None, case["overrides"])
    assert str(e.value).replace(str(tmp_path), "{dir}") == case["message"]


def test_a_value_may_refer_to_another_and_is_saved_resolved(tmp_path):
    (tmp_path / "c.yaml").write_text(f"base: {ROOT / 'configs' / 'toy_vp.yaml'}\nclassifier:\n  seed: ${{train.seed}}\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.seed=7"])
    assert cfg.classifier.seed == 7 and to_dict(cfg)["classifier"]["seed"] == 7
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("text, message", [
    ("base: 3\n", "c.yaml: base must be a file name or a list of them, got 3."),
    ("base: [a.yaml]\ntrain: [1]\n", "c.yaml: a key holds a list in one file and a mapping in another."),
])
def test_bad_base_chains_get_one_line(tmp_path, text, message):
    (tmp_path / "a.yaml").write_text("train: {lr: 0.1}\n")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError) as e:
        load_config(tmp_path / "c.yaml")
    assert str(e.value) == f"{tmp_path}/{message}"
