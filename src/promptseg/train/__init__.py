"""Training of promptseg's own models on synthetic data (CPU-friendly).

* :mod:`.synthetic` — domain-randomised images with instance labels,
* :mod:`.prompts` — simulated clicks, boxes, squiggles and correction clicks,
* :mod:`.trainer` — the training loop, :func:`train`.
"""

from __future__ import annotations

__all__ = ["train"]


def train(config_path, out_dir, resume: bool = True, max_minutes: float | None = None):
    """See :func:`promptseg.train.trainer.train` (imported lazily: it needs torch)."""
    from .trainer import train as _train

    return _train(config_path, out_dir, resume=resume, max_minutes=max_minutes)
