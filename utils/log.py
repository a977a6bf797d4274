"""Logging setup: one format for every script; URLs as log lines may show them."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = True) -> None:
    """INFO messages when verbose (train.py passes False on DDP ranks other than 0), else warnings only."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(format="%(message)s", level=level, force=True)


def masked_url(url: str) -> str:
    """A URL as a log line or message may show it: the password of its user:password@ part replaced by ***
    (the credentials end at the last "@" before the path, since a password may hold one); any other text is
    returned as is."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if not separator or not at or not colon:
        return url
    return f"{scheme}://{user}:***@{host}{slash}{path}"
