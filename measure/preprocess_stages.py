"""clip_preprocess's own metrics (clip_stage_clock.py's stages and paths), read from Triton's metrics port, and
what a measurement window saw of them.

Both counters are summed over the model's instances. So a stage's milliseconds per image are instance time:
with two instances at work, the wall time per image is about half. The models publish every 0.5 s
(clip_preprocess_metrics.py), so each end of a window lags the work by at most that.
"""
from __future__ import annotations

import re
import urllib.request

SECONDS_METRIC = "clip_triton_preprocess_seconds_total"
IMAGES_METRIC = "clip_triton_preprocess_images_total"
Totals = dict[str, dict[str, float]]  # {"seconds": {stage: s}, "images": {path: count}}

_SERIES = re.compile(r'^(?P<name>clip_triton_preprocess_(?:seconds|images)_total)\{(?P<labels>[^}]*)\} (?P<value>\S+)$',
                     re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Totals:
    """The two counters from a metrics page, summed over instances: seconds by stage, images by path."""
    totals: Totals = {"seconds": {}, "images": {}}
    for series in _SERIES.finditer(text):
        labels = dict(_LABEL.findall(series["labels"]))
        kind, key = ("seconds", labels["stage"]) if series["name"] == SECONDS_METRIC else ("images", labels["path"])
        totals[kind][key] = totals[kind].get(key, 0.0) + float(series["value"])
    return totals


def read(metrics_url: str, timeout_s: float = 5.0) -> Totals:
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        return parse(response.read().decode())


def window(before: Totals, after: Totals) -> dict:
    """What happened between two readings: images by path, and each stage's milliseconds per image handled."""
    images = {path: round(count - before["images"].get(path, 0.0)) for path, count in after["images"].items()}
    handled = sum(images.values())
    seconds = {stage: value - before["seconds"].get(stage, 0.0) for stage, value in after["seconds"].items()}
    return {"images": images,
            "ms_per_image": {stage: value * 1000 / handled for stage, value in seconds.items()} if handled else {}}
