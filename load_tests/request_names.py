"""The request names the locustfile reports under, shared with the tools that read locust's statistics.

Kept free of locust (importing it monkey-patches a process for gevent), so tools can import it.
"""
from __future__ import annotations

import re

BAD_IMAGE_REFUSED = "bad image refused (expected)"
_OUTCOME = re.compile(r"(?P<label>.*): (?:accepted|rejected \((?P<status>\w+)\))")


def accepted(label: str) -> str:
    return f"{label}: accepted"


def rejected(label: str, status: str) -> str:
    return f"{label}: rejected ({status})"


def outcome(name: str) -> tuple[str, str] | None:
    """(label, "OK" or the rejection's status) of a name made by `accepted` or `rejected`; None otherwise."""
    match = _OUTCOME.fullmatch(name)
    return (match["label"], match["status"] or "OK") if match else None
