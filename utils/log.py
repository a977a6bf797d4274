"""Logging setup: one format for every script."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = True) -> None:
    """INFO messages when verbose (train.py passes False on DDP ranks other than 0), else warnings only."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(format="%(message)s", level=level, force=True)
