"""Command-line options declared once. Each script's options are a dataclass whose fields carry their
flag's names and help text in their metadata (``option``); the parser is generated from it
(``parse_options``) and ``script_main`` is the one main() of train.py, val.py, detect.py, convert.py and
serve.py.
The flags shared by several scripts (run folder, device) are declared here, once."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any, Callable, Sequence, TypeVar

from utils.errors import USER_ERRORS
from utils.log import setup_logging

LOGGER = logging.getLogger(__name__)
Options = TypeVar("Options")


def option(default: Any = None, help: str | None = None, *flags: str, **argparse_settings: Any) -> Any:
    """A dataclass field that is also a command-line flag: ``flags`` are its option strings (default
    --field-name), ``argparse_settings`` anything else add_argument takes (type, nargs, const, choices,
    action, required). A bool that defaults to False becomes a store_true flag; an int or float default
    gives the flag its type."""
    metadata = {"help": help, "flags": flags, "argparse": argparse_settings}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_set(flags: dict[str, str]) -> Any:
    """A list field that a family of flags fills: each of ``flags`` ({name: help}) is a store_true flag
    --name of its own (destination name), and the field is the list of the names given, in ``flags``'
    order (convert.py's format flags, from the format registry)."""
    return dataclasses.field(default_factory=list, metadata={"flag_set": flags})


def choice_flags(flags: dict[str, tuple[str, str]]) -> Any:
    """A field that one of a family of flags sets: each of ``flags`` ({name: (value, help)}) is a flag
    --name that sets the field to its value (default None): val.py's and detect.py's runtime flags."""
    return dataclasses.field(default=None, metadata={"choice_flags": flags})


# --- the flags several scripts share ------------------------------------------------------------


def project_option(default: str) -> Any:
    return option(default, "save to project/name")


def name_option() -> Any:
    return option("exp", "save to project/name")


def exist_ok_option() -> Any:
    return option(False, "reuse project/name instead of incrementing")


def device_option(default: str = "", help: str = "cpu, 0 or 0,1 (empty: first GPU if any)") -> Any:
    return option(default, help)


def augment_option() -> Any:
    return option(False, "test-time augmentation as yolov5's: scales 1, 0.83 (mirrored) and 0.67, merged")


def half_option() -> Any:
    return option(
        False, "half-precision inference: float16 on CUDA, bfloat16 on a CPU that computes it natively"
    )


# --- parser and main -------------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the dataclass ``cls`` that was declared with ``option``."""
    for field in dataclasses.fields(cls):
        for name, help in field.metadata.get("flag_set", {}).items():
            parser.add_argument(f"--{name}", dest=name, action="store_true", help=help)
        for name, (value, help) in field.metadata.get("choice_flags", {}).items():
            parser.add_argument(f"--{name}", dest=field.name, action="store_const", const=value, help=help)
        if "argparse" not in field.metadata:
            continue
        settings = dict(field.metadata["argparse"])
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        if default is False and "action" not in settings:
            settings["action"] = "store_true"
        elif type(default) in (int, float) and "type" not in settings and "action" not in settings:
            settings["type"] = type(default)
        if field.metadata["help"] is not None:
            settings["help"] = field.metadata["help"]
        if not settings.get("required"):
            settings["default"] = default
        flags = field.metadata["flags"] or (f"--{field.name.replace('_', '-')}",)
        parser.add_argument(*flags, dest=field.name, **settings)


class ForeignFlag(argparse.Action):
    """A flag of yolov5's that is not one of this script's options: it takes any values, sets nothing, is
    not listed by --help, and keeps the ``reason`` it is refused or ignored for."""

    def __init__(self, option_strings: list[str], dest: str, reason: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs="*", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)  # fmt: skip
        self.reason = reason


class Refused(ForeignFlag):
    """Given, it ends the parse with one sentence saying why, and exit status 2."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.exit(2, f"{parser.prog}: {option_string} {self.reason}\n")


class Ignored(ForeignFlag):
    """It would change nothing here: accepted and dropped."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        LOGGER.debug("%s ignored: %s", option_string, self.reason)


def build_parser(cls: type, description: str | None) -> argparse.ArgumentParser:
    """The parser of the options dataclass ``cls``, with the yolov5 flags it names in its class attributes
    REFUSED and IGNORED ({flags: reason}, the flags space-separated)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser, cls)
    for action, flags in ((Refused, getattr(cls, "REFUSED", {})), (Ignored, getattr(cls, "IGNORED", {}))):
        for names, reason in flags.items():
            parser.add_argument(*names.split(), action=action, reason=reason)
    return parser


def parse_options(cls: type[Options], argv: Sequence[str] | None, description: str | None) -> Options:
    """The dataclass ``cls`` filled from the command line ``argv`` (None: sys.argv)."""
    return options_from(cls, vars(build_parser(cls, description).parse_args(argv)))


def options_from(cls: type[Options], values: dict[str, Any]) -> Options:
    """The dataclass ``cls`` from parsed ``values``, or keywords, in which the flags of a flag_set field
    are given one by one (``onnx=True``)."""
    values = dict(values)
    for field in dataclasses.fields(cls):
        names = field.metadata.get("flag_set", {})
        given = [name for name in names if values.pop(name, False)]
        if given:
            values[field.name] = [*values.get(field.name, []), *given]
    return cls(**values)


def script_main(script: str, run: Callable[[Any], Any], options: Any, verbose: bool = True) -> tuple:
    """What every script's main() does: log to the console, run, and turn a user error (utils.errors) into
    one line naming the script. -> (exit status: 0, or 2 after a user error; run's result or None). The
    script exits with that status: the library never ends the process."""
    setup_logging(verbose=verbose)
    try:
        return 0, run(options)
    except USER_ERRORS as error:
        LOGGER.error(f"{script}: {error}")
        return 2, None
