"""Logging setup: one format for every script; quiet on DDP ranks other than 0."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: bool = True) -> None:
    rank = int(os.environ.get("RANK", -1))
    level = logging.INFO if verbose and rank in (-1, 0) else logging.WARNING
    logging.basicConfig(format="%(message)s", level=level, force=True)
