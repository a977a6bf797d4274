"""INT8 and OpenVINO side by side: what each runtime and precision keeps of the mAP, and what it costs.

    python -m bench.quantization [--weights yolov5s=a.pt repyolov5s=b.pt repyolov5s-qa=c.pt]
                                 [--epochs 30] [--max-drop 1.0] [--calib 128] [--sizes 320 640]
                                 [--threads 2] [--rounds 20] [--project runs/bench-quantization] [--json F]

For plain yolov5s, repyolov5s and repyolov5s-qa (trained here on the bundled dataset for --epochs, or
given with --weights NAME=best.pt), convert.py writes, at the training image size, the fused checkpoint,
its ONNX and OpenVINO IR and both INT8 models, then again with --max-drop (the bounded-drop INT8).
val.py's own run() measures mAP50 and mAP50-95 of every artefact on the validation split, so the numbers
are the ones val.py prints for those files. Then every model is exported again at each of --sizes and
timed at batch 1 in one process, all runtimes and precisions interleaved round by round, --threads
threads each: PyTorch eager (NCHW), PyTorch channels_last, ONNX Runtime FP32 and INT8, OpenVINO FP32 and
INT8, and on a CPU that computes bfloat16 natively the --half rows: PyTorch (channels_last, bfloat16
autocast) and OpenVINO FP32 IR with bf16 inference precision, scored by val.py --half too. The header
names the CPU features that decide INT8 speed (AVX2, AVX-512, VNNI, AMX).

Artefacts are kept under --project and reused when the bench runs again (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import torch

MODELS = ("yolov5s.yaml", "repyolov5s.yaml", "repyolov5s-qa.yaml")
FP32, INT8 = "float32", "int8"
# (row label, (format, precision) of the artefact: utils.deploy.formats): what convert.py writes, in order
ARTEFACTS = (
    ("PyTorch fused", ("pytorch", FP32)),
    ("ORT FP32", ("onnx", FP32)),
    ("OpenVINO FP32", ("openvino", FP32)),
    ("ORT INT8", ("onnx", INT8)),
    ("OpenVINO INT8", ("openvino", INT8)),
)
# (row label, artefact, FP32 row) of the --max-drop models
BOUNDED = (
    ("ORT INT8 bounded", ("onnx", INT8), "ORT FP32"),
    ("OpenVINO INT8 bounded", ("openvino", INT8), "OpenVINO FP32"),
)
# (row label, artefact, its FP32 row) of --half: bfloat16 on a CPU with it natively (float16 on CUDA)
HALF = (
    ("PyTorch half", ("pytorch", FP32), "PyTorch fused"),
    ("OpenVINO half", ("openvino", FP32), "OpenVINO FP32"),
)
# (INT8 or half row, the FP32 row of the same runtime): the drop is measured against the runtime's own
# float model
DROPS = (("ORT INT8", "ORT FP32"), ("OpenVINO INT8", "OpenVINO FP32"), *((b[0], b[2]) for b in BOUNDED),
         *((h[0], h[2]) for h in HALF))  # fmt: skip
FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx512vnni", "avx_vnni"),
    "AMX": ("amx_int8", "amx_tile"),
    "BF16": ("avx512_bf16", "amx_bf16"),
}
LOGGER = logging.getLogger(__name__)
LATENCY_CALIB = 16  # calibration images of the exports that are only timed (their scores are not read)


def cpu_features() -> dict[str, bool]:
    """Which of the CPU features that matter for INT8 and bfloat16 this machine has."""
    from utils.device import cpu_flags

    flags = cpu_flags()
    return {name: any(flag in flags for flag in names) for name, names in FEATURES.items()} if flags else {}


def trained_weights(cfg: str, given: str | None, epochs: int, project: Path) -> Path:
    """The checkpoint to convert: --weights when given, else one trained here (reused if present)."""
    if given:
        return Path(given)
    best = project / f"train-{Path(cfg).stem}" / "weights" / "best.pt"
    if not best.is_file():
        import train  # the script's run(): the same entry point a user calls

        summary = train.run(cfg=cfg, epochs=epochs, project=str(project), name=f"train-{Path(cfg).stem}",
                            exist_ok=True, plots=False, tensorboard=False)  # fmt: skip
        best = Path(summary["best"])
    return best


def converted(
    weights: Path, folder: Path, img_size: int, calib: int, max_drop: float | None, flags: Mapping = {}
) -> dict:
    """convert.py --openvino --int8 [--max-drop] and the ``flags`` ({"tflite": True, ...}) of ``weights``
    into ``folder`` (reused when done); returns {"fused": path of the fused .pt, "bounded": what
    --max-drop kept}."""
    import convert

    marker = folder / "converted.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    fused = folder / f"{weights.stem}_fused.pt"
    flags = {"openvino": True, **flags}
    report = convert.run(weights, output=fused, img_size=img_size, int8=True, calib=calib, max_drop=max_drop,
                         runs=1, **flags)  # fmt: skip
    done = {"fused": str(fused), "bounded": report.get("bounded", {})}
    marker.write_text(json.dumps(done, indent=2, default=str))
    return done


def artefact(fused: str | Path, name: str, precision: str = FP32) -> Path:
    """The artefact of the format ``name`` (utils.deploy.formats) in ``precision`` beside the fused .pt."""
    from utils.deploy.formats import artefact_path

    return artefact_path(Path(fused).with_suffix(""), name, precision)


def half_available() -> bool:
    """Whether --half runs fast here: bfloat16 on this CPU (the runtimes' rows are CPU rows)."""
    from utils.device import native_bf16_feature

    return native_bf16_feature() is not None


def scores(
    path: Path, data: str | None, img_size: int, half: bool = False, runtime: str | None = None
) -> dict[str, float]:
    """val.py's mAP50 and mAP50-95 (in points) of one artefact on the validation split (``runtime``: val.py's
    runtime flag, e.g. --dnn)."""
    import val

    with tempfile.TemporaryDirectory() as folder:
        results = val.run(data=data, weights=path, img_size=img_size, workers=0, plots=False, quiet=True,
                          save_dir=folder, half=half, device="cpu", runtime=runtime)  # fmt: skip
    return {"mAP50": 100 * results["mAP50"], "mAP50_95": 100 * results["mAP50_95"]}


def latency_calls(fused: str | Path, img_size: int, threads: int) -> dict[str, object]:
    """{runtime label: a batch-1 call} for every runtime and precision of one model's exports."""
    from utils.checkpoint import load_model
    from utils.deploy.backend import load_inference_model

    x = torch.rand(1, 3, img_size, img_size)
    eager = load_model(Path(fused))[0].eval()
    channels_last = load_inference_model(fused)
    calls = {"PyTorch eager": lambda: eager(x), "PyTorch channels_last": lambda: channels_last(x)}
    for label, written in ARTEFACTS[1:]:
        model = load_inference_model(artefact(fused, *written), threads=threads)
        calls[label] = lambda model=model: model(x)
    for label, written, _ in HALF if half_available() else ():
        model = load_inference_model(artefact(fused, *written), threads=threads, half=True)
        calls[label] = lambda model=model: model(x)
    return calls


def run(
    weights: Sequence[str] | Mapping[str, str] = (),
    epochs: int = 30,
    max_drop: float = 1.0,
    calib: int = 128,
    sizes: Sequence[int] = (320, 640),
    threads: int = 2,
    rounds: int = 20,
    project: str = "runs/bench-quantization",
    json_path: str | None = None,
    models: Sequence[str] = MODELS,
    data: str | None = None,
    img_size: int | None = None,
) -> dict:
    """Measure, print the two tables and return (and write to json_path) all the numbers. weights: NAME=path
    strings or a {NAME: path} mapping, NAME a model's stem."""
    from utils.checkpoint import load_checkpoint
    from utils.deploy.fuse import training_img_size
    from utils.deploy.timing import interleaved_latency

    torch.set_num_threads(threads)
    given = dict(weights) if isinstance(weights, Mapping) else dict(item.split("=", 1) for item in weights)
    root = Path(project)
    results: dict = {"cpu": platform.processor() or platform.machine(), "features": cpu_features(),
                     "torch": torch.__version__, "threads": threads, "models": {}}  # fmt: skip
    for cfg in models:
        name = Path(cfg).stem
        checkpoint = trained_weights(cfg, given.get(name), epochs, root)
        ckpt = load_checkpoint(checkpoint)
        map_size = img_size or training_img_size(ckpt)
        data_yaml = data or (ckpt.get("data") or {}).get("yaml_file")
        plain = converted(checkpoint, root / name / f"int8-{map_size}", map_size, calib, None)
        bounded = converted(checkpoint, root / name / f"bounded-{map_size}", map_size, calib, max_drop)
        rows = {
            label: scores(artefact(plain["fused"], *written), data_yaml, map_size)
            for label, written in ARTEFACTS
        }
        for label, written, _ in BOUNDED:
            path = artefact(bounded["fused"], *written)
            rows[label] = scores(path, data_yaml, map_size)
            rows[label]["kept_float"] = bounded["bounded"].get(str(path), {}).get("kept_float", [])
        for label, written, _ in HALF if half_available() else ():
            rows[label] = scores(artefact(plain["fused"], *written), data_yaml, map_size, half=True)
        for label, reference in DROPS:
            if label not in rows:
                continue
            rows[label]["drop"] = rows[reference]["mAP50_95"] - rows[label]["mAP50_95"]
        results["models"][name] = {"weights": str(checkpoint), "img_size": map_size, "map": rows}
        print(format_scores(name, map_size, rows), flush=True)
    for size in sizes:
        calls = {}
        for cfg in models:
            name = Path(cfg).stem
            exported = converted(Path(results["models"][name]["weights"]), root / name / f"latency-{size}",
                                 size, LATENCY_CALIB, None)  # fmt: skip
            for label, call in latency_calls(exported["fused"], size, threads).items():
                calls[(name, label)] = call
        milliseconds = interleaved_latency(calls, rounds, threads, warmup=3)
        for (name, label), value in milliseconds.items():
            results["models"][name].setdefault("latency_ms", {}).setdefault(str(size), {})[label] = value
    print(format_latency(results, sizes, rounds))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def format_scores(name: str, img_size: int, rows: dict) -> str:
    lines = [f"\n{name}: validation split of the bundled dataset at {img_size} px (val.py), points",
             f"{'runtime':24s}{'mAP50':>8s}{'mAP50-95':>10s}{'drop':>7s}  kept float"]  # fmt: skip
    for label, row in rows.items():
        drop = f"{row['drop']:7.2f}" if "drop" in row else f"{'':7s}"
        kept = f"  {len(row['kept_float'])} convs" if "kept_float" in row else ""
        lines.append(f"{label:24s}{row['mAP50']:8.2f}{row['mAP50_95']:10.2f}{drop}{kept}")
    return "\n".join(lines)


def format_latency(results: dict, sizes: Sequence[int], rounds: int) -> str:
    features = ", ".join(
        f"{name} {'yes' if present else 'no'}" for name, present in results["features"].items()
    )
    lines = [f"\nbatch-1 latency, ms (median of {rounds} interleaved rounds, {results['threads']} threads; "
             f"torch {results['torch']}; CPU: {features})"]  # fmt: skip
    labels = ["PyTorch eager", "PyTorch channels_last"] + [label for label, _ in ARTEFACTS[1:]]
    first = next(iter(results["models"].values()))["latency_ms"][str(sizes[0])]
    labels += [label for label, _, _ in HALF if label in first]
    for size in sizes:
        lines.append(f"{size} px: {'model':20s}" + "".join(f"{label:>24s}" for label in labels))
        for name, model in results["models"].items():
            row = model["latency_ms"][str(size)]
            lines.append(f"{'':8s}{name:20s}" + "".join(f"{row[label]:24.1f}" for label in labels))
        for name, model in results["models"].items():
            row = model["latency_ms"][str(size)]
            best_fp32 = min(row[label] for label in ("ORT FP32", "OpenVINO FP32"))
            best_int8 = min(row[label] for label in ("ORT INT8", "OpenVINO INT8"))
            lines.append(
                f"{'':8s}{name:20s} best INT8 / best FP32 {best_int8 / best_fp32:.2f}x, "
                f"best FP32 / PyTorch eager {best_fp32 / row['PyTorch eager']:.2f}x"
            )
            if "OpenVINO half" in row:
                lines.append(
                    f"{'':8s}{name:20s} half / FP32: PyTorch "
                    f"{row['PyTorch half'] / row['PyTorch channels_last']:.2f}x (vs channels_last), "
                    f"OpenVINO {row['OpenVINO half'] / row['OpenVINO FP32']:.2f}x"
                )
    if "OpenVINO half" not in labels:
        lines.append("(no half rows: this CPU has no native bfloat16, where --half is refused)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", nargs="*", default=[], help="NAME=best.pt for any of " + ", ".join(
        Path(cfg).stem for cfg in MODELS) + " (the others are trained)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=30, help="training budget of the models trained here")
    parser.add_argument("--max-drop", type=float, default=1.0, help="the bounded-drop INT8 rows' bound")
    parser.add_argument("--calib", type=int, default=128, help="INT8 calibration images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="latency image sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--project", default="runs/bench-quantization")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help="model YAMLs (their stems name them)"
    )
    parser.add_argument("--data", default=None, help="dataset YAML (default: each checkpoint's own)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from utils.log import setup_logging

    setup_logging()
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    main()
