"""bench.branches and bench.frontier: the arms and their paired branch gains, the model-YAML overrides
of a study's model spec, and the frontier rows, on made-up runs (the studies themselves train for hours)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from bench.accuracy import Budget, Variant, paired_interval
from bench.branches import ARMS, format_tables, study_models, summarize
from bench.frontier import format_frontier, frontier_rows, study_scores
from models.yolo import Model
from utils.errors import ConfigError
from utils.hyp import load_hyp


def made_up_runs() -> list[dict]:
    values = {
        "yolov5s.yaml": [0.30, 0.31, 0.29],
        "repyolov5s.yaml": [0.31, 0.30, 0.30],
        "yolov5s-plain.yaml": [0.25, 0.24, 0.26],
        "repyolov5s-plain.yaml": [0.28, 0.29, 0.27],
    }
    return [{"model": spec, "seed": seed, "mAP50": v + 0.2, "mAP50_95": v, "minutes": 4.0}
            for spec, series in values.items() for seed, v in enumerate(series)]  # fmt: skip


def test_the_arms_name_each_model_once_with_yolov5s_first():
    assert study_models(["plain-relu", "plain-qa"]) == [
        "yolov5s.yaml",
        "yolov5s-plain.yaml",
        "repyolov5s-plain.yaml",
        "repyolov5s-plain-qa.yaml",
    ]
    assert len(study_models(list(ARMS))) == 8
    with pytest.raises(ConfigError, match="unknown arm 'plain'; use any of c3-silu"):
        study_models(["plain"])


def test_the_branch_gain_is_the_model_minus_its_twin_paired_by_seed():
    summary = summarize(made_up_runs(), ["c3-silu", "plain-relu", "plain-silu"])
    assert set(summary["arms"]) == {"c3-silu", "plain-relu"}  # no runs of the SiLU pair: no row
    gain = summary["arms"]["plain-relu"]
    expected = paired_interval([0.28, 0.29, 0.27], [0.25, 0.24, 0.26])
    assert gain["mAP50_95"]["delta"] == pytest.approx(list(expected))
    assert gain["wins"] == 3 and gain["seeds"] == 3
    assert summary["models"]["yolov5s.yaml"]["mAP50_95"]["delta"] is None
    versus_yolov5s = summary["models"]["yolov5s-plain.yaml"]["mAP50_95"]["delta"]
    assert versus_yolov5s == pytest.approx(list(paired_interval([0.25, 0.24, 0.26], [0.30, 0.31, 0.29])))
    table = format_tables(summary, "header")
    mean, low, high = expected
    assert f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]" in table and "3 / 3" in table


def test_a_model_spec_may_switch_the_activation_of_its_yaml(tmp_path):
    variant = Variant.parse("repyolov5s-plain.yaml:activation=SiLU:amp=false")
    assert variant.model_overrides == {"activation": "SiLU"} and variant.overrides == {"amp": False}
    assert variant.run_name(1) == "repyolov5s-plain-activation=SiLU-amp=False-seed1"
    cfg = variant.model_cfg(str(tmp_path))
    assert cfg == str(tmp_path / "cfgs" / "repyolov5s-plain-activation=SiLU-amp=False.yaml")
    assert yaml.safe_load(open(cfg))["activation"] == "SiLU"
    assert Model(cfg, nc=2).yaml["activation"] == "SiLU"
    assert variant.model_cfg(str(tmp_path)) == cfg  # written once, found again
    assert Variant.parse("yolov5s.yaml").model_cfg(str(tmp_path)) == "yolov5s.yaml"


def test_a_model_spec_may_change_a_hyperparameter(tmp_path):
    variant = Variant.parse("repyolov5s-plain.yaml:rep_branch_gamma=1")
    assert variant.hyp_overrides == {"rep_branch_gamma": 1} and variant.run_name(0).endswith("gamma=1-seed0")
    options = Budget(data="data/shapes-hard.yaml").options(variant, 0, str(tmp_path))
    hyp = load_hyp(options.hyp)
    assert options.hyp == str(tmp_path / "hyps" / "repyolov5s-plain-rep_branch_gamma=1.yaml")
    assert hyp.rep_branch_gamma == 1.0
    assert dataclasses.replace(hyp, rep_branch_gamma=0.0) == load_hyp(
        "hyp.shapes.yaml"
    )  # the rest: the data's


def test_frontier_rows_pick_the_fastest_runtime_and_compare_it_with_yolov5s(tmp_path):
    def model(scale: float, drop: float) -> dict:
        latency = {"PyTorch channels_last": 100 * scale, "ORT FP32": 80 * scale, "OpenVINO FP32": 60 * scale,
                   "ORT INT8": 50 * scale, "OpenVINO INT8": 30 * scale}  # fmt: skip
        return {"map": {"ORT INT8": {"drop": drop}, "OpenVINO INT8": {"drop": drop / 2}},
                "latency_ms": {"640": latency}}  # fmt: skip

    results = {"models": {"yolov5s": model(1.0, 1.0), "yolov5s-plain": model(0.5, 0.4)}}
    study = {"yolov5s": {"mAP50_95": [0.30, 0.32]}, "yolov5s-plain": {"mAP50_95": [0.25, 0.27]}}
    rows = frontier_rows(results, study, [640])
    plain = rows[1]
    assert plain["fp32"] == {"runtime": "OpenVINO FP32", "ms": 30.0, "vs_reference": 0.5}
    assert plain["int8"]["runtime"] == "OpenVINO INT8" and plain["int8"]["vs_reference"] == 0.5
    assert plain["mAP50_95"] == pytest.approx(26.0) and "half" not in plain
    assert plain["int8_drop"] == {"ORT INT8": 0.4, "OpenVINO INT8": 0.2}
    assert "OpenVINO INT8 15.0 ms 0.50x" in format_frontier(rows, 2)


def test_the_frontier_reads_the_studys_runs_or_says_what_to_run(tmp_path):
    variant = Variant.parse("yolov5s-plain.yaml")
    for seed, score in ((0, 0.25), (1, 0.27)):
        folder = tmp_path / variant.run_name(seed)
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"mAP50_95": score}))
    (tmp_path / "yolov5s-plain-activation=SiLU-seed0").mkdir()  # another model: not read
    assert study_scores(variant, str(tmp_path)) == {"seeds": [0, 1], "mAP50_95": [0.25, 0.27]}
    with pytest.raises(ConfigError, match="holds no finished run of yolov5s.yaml; train the study first"):
        study_scores(Variant.parse("yolov5s.yaml"), str(tmp_path))
