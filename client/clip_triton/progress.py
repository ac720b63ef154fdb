"""A tqdm progress bar when asked for, and a do-nothing bar otherwise (one code path for both)."""
from __future__ import annotations

from tqdm import tqdm


def progress_bar(total: int | None, enabled: bool) -> tqdm:
    """Counts images (not requests), so the bar moves smoothly whatever the batch size."""
    return tqdm(total=total, disable=not enabled, unit="img", desc="encoding", dynamic_ncols=True)


def advance(result, bar: tqdm):
    """Count a finished request's images on the bar and pass its result through."""
    bar.update(result.count)
    return result
