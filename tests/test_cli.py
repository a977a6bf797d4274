"""The scripts' options are declared once (utils.cli), and every flag keeps its name, destination and
default: tests/data/cli_flags.json is each script's flags as they were before the options became
dataclasses."""

from __future__ import annotations

import argparse
import json

import pytest

from utils.cli import build_parser
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
        if not isinstance(action, argparse._HelpAction)
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
