"""What an encode call produces: features for the inputs that succeeded, and a reason for each that failed.

Rows are always tied to input indices, so a bad image can never shift a good image's vector onto the
wrong input, and partial results (one request's worth, or a whole job) combine by concatenation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ImageFailure:
    """One refused input: its position in the caller's sequence, a label (the path if any) and why."""

    index: int
    label: str
    reason: str
    path: str | None = None


@dataclass
class EncodeResult:
    """Features [M, D] float32 for the M inputs that succeeded (`indices`, ascending) plus the failures.

    `count` is the number of inputs covered; `len(indices) + len(failures) == count` always holds.
    """

    features: np.ndarray
    indices: np.ndarray
    failures: list[ImageFailure] = field(default_factory=list)
    count: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    @classmethod
    def empty(cls, dim: int) -> "EncodeResult":
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), [], 0)

    @classmethod
    def concatenate(cls, parts: Sequence["EncodeResult"], dim: int) -> "EncodeResult":
        """Join consecutive partial results (as streamed by `iter_encode`) into one."""
        if not parts:
            return cls.empty(dim)
        return cls(
            features=np.concatenate([p.features for p in parts]).astype(np.float32, copy=False),
            indices=np.concatenate([p.indices for p in parts]).astype(np.int64, copy=False),
            failures=[f for p in parts for f in p.failures],
            count=sum(p.count for p in parts),
        )


def assemble_chunk(count: int, rows: dict[int, np.ndarray], failures: dict[int, ImageFailure],
                   dim: int) -> EncodeResult:
    """Order one request's rows (keyed by global index) and failures into an EncodeResult."""
    indices = sorted(rows)
    if set(indices) & set(failures):  # a bad image must never receive a vector
        raise AssertionError(f"inputs {sorted(set(indices) & set(failures))} both failed and got features")
    if len(indices) + len(failures) != count:
        raise AssertionError(f"request covering {count} inputs accounted for {len(indices) + len(failures)}")
    features = np.stack([rows[i] for i in indices]).astype(np.float32, copy=False) if indices else \
        np.zeros((0, dim), np.float32)
    return EncodeResult(features, np.asarray(indices, dtype=np.int64),
                        [failures[i] for i in sorted(failures)], count)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Unit rows, for cosine similarity (a zero row stays zero instead of becoming NaN)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)
