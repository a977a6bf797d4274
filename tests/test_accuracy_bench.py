"""bench/accuracy.py: its statistics, its model specs, a tiny end-to-end study; and the seeding it relies
on (the same seed reproduces a training run exactly, another seed changes it)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import train
from bench.accuracy import Budget, Variant, format_table, paired_interval, run, summarize, t_critical
from tests.helpers import make_tiny_dataset
from utils.errors import ConfigError
from utils.train.results import ResultsTable

# --- statistics ----------------------------------------------------------------------------------

# t_{0.975} from published tables (degrees of freedom: value)
T_975 = {1: 12.7062047, 2: 4.3026527, 3: 3.1824463, 4: 2.7764451, 5: 2.5705818, 9: 2.2621572, 29: 2.0452296}


def test_t_critical_matches_the_tables():
    for dof, expected in T_975.items():
        assert t_critical(0.95, dof) == pytest.approx(expected, abs=1e-6), dof
    assert t_critical(0.90, 4) == pytest.approx(2.1318468, abs=1e-6)


def test_t_critical_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats", reason="scipy is not required; installed, it checks the table")
    for dof in range(1, 40):
        for confidence in (0.8, 0.95, 0.99):
            expected = stats.t.ppf((1 + confidence) / 2, dof)
            assert t_critical(confidence, dof) == pytest.approx(expected, rel=1e-8), (dof, confidence)


def test_paired_interval_on_known_numbers():
    # differences 0.1, 0.15, 0.05: mean 0.1, sd 0.05, half-width t_{0.975, 2} * 0.05 / sqrt(3)
    mean, low, high = paired_interval([0.5, 0.6, 0.7], [0.4, 0.45, 0.65])
    half = 4.3026527 * 0.05 / math.sqrt(3)
    assert (
        mean == pytest.approx(0.1) and low == pytest.approx(0.1 - half) and high == pytest.approx(0.1 + half)
    )
    assert paired_interval([0.5], [0.25]) == (0.25, None, None)


def test_summary_pairs_by_seed_and_the_table_shows_it():
    runs = [
        {"model": m, "seed": s, "mAP50": v + 0.2, "mAP50_95": v, "minutes": 2.0}
        for m, values in (("a.yaml", [0.40, 0.45, 0.65]), ("b.yaml", [0.5, 0.6, 0.7]))
        for s, v in enumerate(values)
    ]
    summary = summarize(runs, ["a.yaml", "b.yaml"])
    assert summary["a.yaml"]["delta_mAP50_95"] is None and summary["b.yaml"]["runs"] == 3
    mean, low, high = summary["b.yaml"]["delta_mAP50_95"]
    assert (mean, low, high) == pytest.approx(paired_interval([0.5, 0.6, 0.7], [0.4, 0.45, 0.65]))
    assert summary["b.yaml"]["mAP50_std"] == pytest.approx(0.1)
    summary["a.yaml"]["fused_ms"] = summary["b.yaml"]["fused_ms"] = 10.0
    table = format_table(summary, "header")
    assert "reference" in table and f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" in table


def test_model_specs_with_overrides():
    variant = Variant.parse("repyolov5s.yaml:hyp=data/hyps/hyp.scratch-low.yaml:cos_lr=true:optimizer=AdamW")
    assert variant.overrides == {
        "hyp": "data/hyps/hyp.scratch-low.yaml",
        "cos_lr": True,
        "optimizer": "AdamW",
    }
    assert (
        variant.run_name(2)
        == "repyolov5s-hyp=data_hyps_hyp.scratch-low.yaml-cos_lr=True-optimizer=AdamW-seed2"
    )
    assert Variant.parse("models/yolov5s.yaml").run_name(0) == "yolov5s-seed0"
    with pytest.raises(ConfigError, match="not key=value"):
        Variant.parse("yolov5s.yaml:seed=3")  # the study owns the seed


# --- seeded training runs ------------------------------------------------------------------------


def _run_record(summary):
    """Everything a run produced that a seed decides: results.csv without its times, and the weights."""
    rows = ResultsTable(summary["save_dir"] / "results.csv").rows()
    weights = torch.load(summary["best"], weights_only=True)["model"]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows], weights


def test_same_seed_reproduces_a_run_and_another_seed_changes_it(tiny_study_dataset):
    root, data_yaml, model_yaml = tiny_study_dataset
    common = dict(cfg=str(model_yaml), data=str(data_yaml), epochs=2, img_size=64, batch_size=4, device="cpu",
                  workers=2, project=str(root / "seeds"), plots=False, tensorboard=False,
                  repeat=1)  # fmt: skip
    rows_a, weights_a = _run_record(train.run(seed=0, name="a", **common))  # augmenting in worker processes
    rows_b, weights_b = _run_record(train.run(seed=0, name="b", **common))
    assert rows_a == rows_b and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    rows_c, weights_c = _run_record(train.run(seed=1, name="c", **common))
    assert rows_c != rows_a and not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


def test_study_end_to_end_writes_the_json_and_resumes(tiny_study_dataset, capsys):
    root, data_yaml, model_yaml = tiny_study_dataset
    models = [str(model_yaml), f"{model_yaml}:optimizer=AdamW"]
    budget = Budget(str(data_yaml), epochs=1, img_size=64, batch_size=4, device="cpu", workers=0, repeat=1)
    project, json_path = str(root / "study"), root / "study.json"
    interrupted = budget.options(Variant.parse(models[1]), 1, project)
    train.run(interrupted, stop_after_epochs=1)  # as if killed before its end-of-run step

    result = run(models, seeds=2, budget=budget, project=project, json_path=str(json_path))
    written = json.loads(json_path.read_text())
    assert written == json.loads(json.dumps(result)) and len(written["runs"]) == 4
    assert [(r["model"], r["seed"]) for r in written["runs"]] == [(m, s) for s in (0, 1) for m in models]
    assert {r["status"] for r in written["runs"]} == {"trained", "resumed"}
    assert next(r for r in written["runs"] if r["status"] == "resumed")["seed"] == 1
    assert all(0 <= r["mAP50_95"] <= r["mAP50"] <= 1 and r["minutes"] > 0 for r in written["runs"])
    summary = written["summary"]
    assert list(summary) == models and len(summary[models[1]]["delta_mAP50_95"]) == 3
    assert written["budget"]["epochs"] == 1 and written["budget"]["img_size"] == 64
    table = capsys.readouterr().out
    assert "reference" in table and "optimizer=AdamW" in table

    again = run(models, seeds=2, budget=budget, project=project)  # everything is on disk now
    assert {r["status"] for r in again["runs"]} == {"reused"}
    assert [r["mAP50_95"] for r in again["runs"]] == [r["mAP50_95"] for r in written["runs"]]
    with pytest.raises(ConfigError, match="epochs=1 but this study asks for 2"):
        run(models, seeds=1, budget=dataclasses.replace(budget, epochs=2), project=project)
    stored = Path(written["runs"][0]["save_dir"]) / "hyp.yaml"  # as if the defaults changed since that run
    stored.write_text(stored.read_text().replace("lr0: 0.01", "lr0: 0.02"))
    with pytest.raises(ConfigError, match="holds a run with lr0=0.02 but this study asks for 0.01"):
        run(models, seeds=1, budget=budget, project=project)


def test_the_finetune_bench_pretrains_once_and_grows_each_arm_from_it(tmp_path, capsys):
    from bench import finetune

    data_yaml, model_yaml = make_tiny_dataset(tmp_path, train_images=4, val_images=2)
    config = yaml.safe_load(model_yaml.read_text())
    config["backbone"][1][2] = "RepVGGBlock"  # the stride-2 3x3 conv after the stem
    rep_yaml = tmp_path / "tiny_rep.yaml"
    rep_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    tiny = dict(data=str(data_yaml), epochs=1, img_size=64, batch_size=4, workers=0, device="cpu", repeat=1)
    arms = [f"{model_yaml}:weights={{pretrained}}", f"{rep_yaml}:weights={{pretrained}}"]
    project = str(tmp_path / "study")
    source = finetune.Pretraining(Budget(**tiny), str(model_yaml))
    first = finetune.run(arms, seeds=1, budget=Budget(**tiny), project=project, pretraining=source)
    again = finetune.run(arms, seeds=1, budget=Budget(**tiny), project=project, pretraining=source)
    printed = capsys.readouterr().out
    assert "trained pretraining" in printed and "reused pretraining" in printed
    assert [row["status"] for row in first["runs"]] == ["trained", "trained"]
    assert [row["status"] for row in again["runs"]] == ["reused", "reused"]
    assert Path(first["pretrained"]).name == "best.pt" and first["summary"][arms[1]]["runs"] == 1
    grown = yaml.safe_load((Path(first["runs"][1]["save_dir"]) / "opt.yaml").read_text())
    assert grown["weights"] == first["pretrained"] and grown["cfg"] == str(rep_yaml)
