"""clip_preprocess's own metrics per benchmark level, as a Markdown table (both reports use it)."""
from __future__ import annotations

from typing import Callable, Iterable

from clip_triton_export.triton_models.stage_clock import PATHS, STAGES


def in_pipeline_order(names: Iterable[str], order: tuple[str, ...] = STAGES) -> list[str]:
    """`names` once each, in the order a batch meets them (the clock's); names it does not know come last, as
    seen. Metrics arrive in whatever order Triton prints them."""
    seen = list(dict.fromkeys(names))
    return [name for name in order if name in seen] + [name for name in seen if name not in order]


def preprocess_stages_table(levels: list[dict], level_name: Callable[[dict], str]) -> list[str]:
    """Each level's `preprocess_stages` (measure.preprocess_stages.window): each stage's instance time per
    image, and the images by path. Levels measured before the metrics existed have none: no rows, and no
    table when none has them."""
    measured = [(level, level.get("preprocess_stages")) for level in levels]
    measured = [(level, stages) for level, stages in measured if stages and stages.get("ms_per_image")]
    if not measured:
        return []
    stages = in_pipeline_order(stage for _, seen in measured for stage in seen["ms_per_image"])
    paths = in_pipeline_order((path for _, seen in measured for path in seen.get("images", {})), PATHS)
    lines = ["", "Where clip_preprocess's time goes (its own metrics: milliseconds per image in each stage, summed "
             "over instances, so the wall time per image is about this divided by the busy instances; images by "
             f"path as {' / '.join(paths)}):", "",
             "| level | " + " | ".join(stages) + f" | images {' / '.join(paths)} |",
             "|---|" + "---|" * (len(stages) + 1)]
    for level, seen in measured:
        images = seen.get("images", {})
        lines.append(f"| {level_name(level)} | " + " | ".join(f"{seen['ms_per_image'].get(stage, 0):.3f}"
                                                             for stage in stages) +
                     " | " + " / ".join(f"{images.get(path, 0):,}" for path in paths) + " |")
    return lines
