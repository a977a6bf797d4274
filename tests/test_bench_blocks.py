"""bench/blocks.py's table (the measurements themselves are the benchmark, not a test)."""

from bench.blocks import MODELS, PLAIN, format_table, parse_args


def test_table_prints_ratios_to_plain_and_map_columns_when_trained():
    row = {"images_per_s": 10.0, "peak_mib": 1000.0, "params": 7_235_389, "params_fused": 7_225_885}
    results = {PLAIN: {**row, "fused_ms": 50.0}, "repyolov5s-orepa.yaml": {**row, "fused_ms": 50.0}}
    results["repyolov5s-orepa.yaml"].update(images_per_s=9.5, peak_mib=1100.0)
    table = format_table(results, "header")
    orepa = next(line for line in table.splitlines() if line.startswith("repyolov5s-orepa"))
    assert "0.95" in orepa and "1.10" in orepa and "mAP50" not in table
    results[PLAIN].update(mAP50=0.95, mAP50_95=0.7)
    assert "mAP50-95" in format_table(results, "header")


def test_defaults_and_models():
    args = parse_args([])
    assert (args.img_size, args.batch_size, args.threads, args.epochs) == (320, 8, 2, 0)
    assert PLAIN in MODELS and len(MODELS) == 7
    assert {f"repyolov5s-{v}.yaml" for v in ("acb", "dbb", "orepa", "mobileone", "qa")} < set(MODELS)
