"""Training of promptseg's own models on synthetic data (CPU-friendly).

* :mod:`.synthetic` — domain-randomised images with instance labels,
* :mod:`.prompts` — simulated clicks, boxes, squiggles and correction clicks,
* :mod:`.trainer` — the training loop, :func:`train`,
* :mod:`.edges` — training of the edge refiner on a trained model's own masks,
* :mod:`.iou_head` — fine-tuning of the decoder's IoU head, which picks what a lone click shows.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["train"]
FINE_TUNINGS = ("edges", "iou_head")  # config sections that train one part of a trained model


def fine_tuning(path) -> str | None:
    """The fine-tuning section (one of :data:`FINE_TUNINGS`) a TOML config holds, or None."""
    path = Path(path)
    if path.suffix != ".toml":
        return None
    raw = tomllib.loads(path.read_text())
    return next((s for s in FINE_TUNINGS if s in raw), None)


def read_section(path, section: str, defaults: dict) -> dict:
    """``[section]`` of a TOML config over ``defaults``; ValueError naming any unknown key."""
    raw = tomllib.loads(Path(path).read_text()).get(section, {})
    unknown = set(raw) - set(defaults)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)} in [{section}]")
    return {**defaults, **raw}


def train(config_path, out_dir, resume: bool = True, max_minutes: float | None = None):
    """See :func:`promptseg.train.trainer.train` (imported lazily: it needs torch); a config with an
    ``[edges]`` section trains a model's edge refiner instead (:mod:`promptseg.train.edges`), one with an
    ``[iou_head]`` section its decoder's IoU head (:mod:`promptseg.train.iou_head`)."""
    section = fine_tuning(config_path)
    if section == "edges":
        from .edges import train_edges

        return train_edges(config_path, out_dir, resume=resume, max_minutes=max_minutes)
    if section == "iou_head":
        from .iou_head import train_iou_head

        return train_iou_head(config_path, out_dir, resume=resume, max_minutes=max_minutes)
    from .trainer import train as _train

    return _train(config_path, out_dir, resume=resume, max_minutes=max_minutes)
