"""Classes named on the command line or in a config as 'module:Class'."""
import importlib


def get_cls_by_name(name: str):
    """Import a class (or any attribute) given as 'module:Class'.

    Args:
        name: 'package.module:ClassName', e.g. 'transformers:AutoModelForSequenceClassification'.

    Returns:
        The attribute found.
    """
    module_name, sep, attr_name = name.partition(":")
    if not sep or not module_name or not attr_name:
        raise ValueError(f"class name {name!r} is not of the form 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} of {name!r}: {error}") from error
    if not hasattr(module, attr_name):
        raise ValueError(f"module {module_name!r} has no attribute {attr_name!r} (from {name!r})")
    return getattr(module, attr_name)
