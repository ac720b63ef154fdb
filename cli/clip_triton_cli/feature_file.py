"""The `.npz` file `clip-triton encode` writes: features by path, plus the failures and their reasons.

Arrays: `paths` [M] str, `features` [M, D] float32 (row i belongs to paths[i]), `failed_paths` [F]
str, `failed_reasons` [F] str, `normalized` bool scalar. It is rewritten atomically (a temporary file
in the same folder, then a rename), so an interrupted run leaves either the previous complete file
or the new one — never a torn file — and `--resume` can trust whatever it finds.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KEYS = ("paths", "features", "failed_paths", "failed_reasons", "normalized")


@dataclass
class FeatureFile:
    normalized: bool
    paths: list[str] = field(default_factory=list)
    feature_parts: list[np.ndarray] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "FeatureFile":
        """Read a file written by `save`; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [key for key in KEYS if key not in data.files]
                if missing:
                    raise ValueError(f"{path} is not a clip-triton features file (missing {', '.join(missing)})")
                features = data["features"].astype(np.float32, copy=False)
                paths = [str(p) for p in data["paths"]]
                if features.ndim != 2 or len(features) != len(paths):
                    raise ValueError(f"{path}: {len(paths)} paths but features of shape {features.shape}")
                failures = dict(zip(map(str, data["failed_paths"]), map(str, data["failed_reasons"])))
                return cls(bool(data["normalized"]), paths, [features] if len(paths) else [], failures)
        except (OSError, EOFError) as error:
            raise ValueError(f"cannot read {path}: {error}") from None

    @property
    def features(self) -> np.ndarray | None:
        return np.concatenate(self.feature_parts) if self.feature_parts else None

    def add(self, paths: list[str], features: np.ndarray, failures: dict[str, str]) -> None:
        if len(paths):
            self.paths += paths
            self.feature_parts.append(np.asarray(features, dtype=np.float32))
            for path in paths:
                self.failures.pop(path, None)
        self.failures.update(failures)

    def save(self, path: Path, dim: int) -> None:
        """Write atomically: the old file stays intact until the new one is complete on disk."""
        features = self.features if self.feature_parts else np.zeros((0, dim), np.float32)
        if len(self.feature_parts) > 1:
            self.feature_parts = [features]  # keep one array, so later saves do not re-concatenate
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, paths=np.array(self.paths, dtype=str), features=features,
                         failed_paths=np.array(list(self.failures), dtype=str),
                         failed_reasons=np.array(list(self.failures.values()), dtype=str),
                         normalized=np.array(self.normalized))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

