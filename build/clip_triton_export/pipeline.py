"""Checkpoint (or random init) -> artifact -> complete model repository: what `clip-triton export` does."""
from __future__ import annotations

from pathlib import Path

from .architectures import named_architecture
from .checkpoint import LoadedVisual, load_checkpoint, random_visual
from .export import export_visual
from .repository import RepositoryOptions, artifact_path, render_repository, write_repository


def load_source(checkpoint: Path | None, random_init: str | None, seed: int = 0) -> LoadedVisual:
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    if random_init is None:
        raise ValueError("give a checkpoint file or an architecture name for random weights")
    return random_visual(named_architecture(random_init), random_init, seed)


def export_repository(repository: Path, checkpoint: Path | None = None, random_init: str | None = None,
                      seed: int = 0, configs_only: bool = False, **options) -> str:
    """Write the repository; returns a one-paragraph summary for people."""
    loaded = load_source(checkpoint, random_init, seed)
    repo_options = RepositoryOptions(weights=None if configs_only else loaded.source, **options)
    files = render_repository(loaded.spec, repo_options)
    write_repository(Path(repository), files)
    lines = [f"wrote {repository}: {len(files)} files ({repo_options.fmt}, target {repo_options.target})",
             f"  architecture: {loaded.spec}"]
    if not configs_only:
        artifact = export_visual(loaded.model, loaded.spec, repo_options.fmt, artifact_path(Path(repository), repo_options))
        lines.append(f"  model: {artifact} ({artifact.stat().st_size / 1e6:.1f} MB)")
    if loaded.random_weights and not configs_only:
        lines.append("  WEIGHTS ARE RANDOM (seeded): features are not meaningful; pass --checkpoint for real ones")
    return "\n".join(lines)
