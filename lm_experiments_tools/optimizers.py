"""The optimizer class that a name such as --optimizer AdamW stands for."""
import importlib

import torch

from .class_names import get_cls_by_name


def get_optimizer(name: str):
    """Find an optimizer class by name.

    Args:
        name: a class of `torch.optim` ('AdamW'), of `transformers.optimization` ('Adafactor'), or 'module:Class'.

    Returns:
        The optimizer class (not an instance).
    """
    if ":" in name:
        return get_cls_by_name(name)
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name)
    transformers_optimization = importlib.import_module("transformers.optimization")
    if hasattr(transformers_optimization, name):
        return getattr(transformers_optimization, name)
    raise ValueError(f"unknown optimizer {name!r}: expected a torch.optim or transformers optimizer name "
                     f"(e.g. 'AdamW', 'Adafactor') or 'module:Class'")
