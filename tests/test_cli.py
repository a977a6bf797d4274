"""The scripts' options are declared once (utils.cli), and every flag keeps its name, destination and
default: tests/data/cli_flags.json is each script's flags as they were before the options became
dataclasses."""

from __future__ import annotations

import argparse
import json

import pytest

from utils.cli import ForeignFlag, build_parser
from utils.paths import ROOT

RECORDED = json.loads((ROOT / "tests" / "data" / "cli_flags.json").read_text())


def options_of(script: str) -> type:
    if script == "train":
        from utils.train.options import TrainOptions

        return TrainOptions
    module = __import__(script)
    return getattr(module, f"{script.capitalize()}Options")


def flags(parser: argparse.ArgumentParser) -> dict:
    """What --help promises of each flag: its names, destination, default, arity, type and choices."""
    return {
        " ".join(action.option_strings): {
            "action": type(action).__name__,
            "choices": list(action.choices) if action.choices else None,
            "const": action.const,
            "default": action.default,
            "dest": action.dest,
            "nargs": action.nargs,
            "required": action.required,
            "type": getattr(action.type, "__name__", None),
        }
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, ForeignFlag))
    }


@pytest.mark.parametrize("script", sorted(RECORDED))
def test_every_flag_is_unchanged(script):
    assert flags(build_parser(options_of(script), None)) == RECORDED[script]


@pytest.mark.parametrize("script", sorted(RECORDED))
def test_help_prints_every_flag(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for names in RECORDED[script] for name in names.split())


@pytest.mark.parametrize("script", sorted(RECORDED))
def test_refused_yolov5_flags_are_one_sentence_and_ignored_ones_change_nothing(script, capsys):
    """Each yolov5 flag a script refuses ends it with exit status 2 and one sentence naming the flag, with or
    without values; each one it ignores parses to the same options as without it."""
    options = options_of(script)
    for names, reason in getattr(options, "REFUSED", {}).items():
        for name in names.split():
            with pytest.raises(SystemExit) as exit_info:
                build_parser(options, None).parse_args(["--weights", "w.pt", name, "1"])
            assert exit_info.value.code == 2
            err = capsys.readouterr().err.strip()
            assert err.endswith(f"{name} {reason}") and err.count("\n") == 0 and reason.endswith(".")
    for names in getattr(options, "IGNORED", {}):
        for name in names.split():
            given = build_parser(options, None).parse_args(["--weights", "w.pt", name, "1"])
            assert vars(given) == vars(build_parser(options, None).parse_args(["--weights", "w.pt"]))
