"""Training of promptseg's own models on synthetic data (CPU-friendly).

* :mod:`.synthetic` — domain-randomised images with instance labels,
* :mod:`.prompts` — simulated clicks, boxes, squiggles and correction clicks,
* :mod:`.trainer` — the training loop, :func:`train`,
* :mod:`.edges` — training of the edge refiner on a trained model's own masks,
* :mod:`.iou_head` — fine-tuning of the decoder's IoU head, which picks what a lone click shows.
"""

from __future__ import annotations

__all__ = ["train"]


def train(config_path, out_dir, resume: bool = True, max_minutes: float | None = None):
    """See :func:`promptseg.train.trainer.train` (imported lazily: it needs torch); a config with an
    ``[edges]`` section trains a model's edge refiner instead (:mod:`promptseg.train.edges`), one with an
    ``[iou_head]`` section its decoder's IoU head (:mod:`promptseg.train.iou_head`)."""
    from .edges import is_edges_config, train_edges
    from .iou_head import is_iou_head_config, train_iou_head

    if is_edges_config(config_path):
        return train_edges(config_path, out_dir, resume=resume, max_minutes=max_minutes)
    if is_iou_head_config(config_path):
        return train_iou_head(config_path, out_dir, resume=resume, max_minutes=max_minutes)
    from .trainer import train as _train

    return _train(config_path, out_dir, resume=resume, max_minutes=max_minutes)
