"""Loads dlkern._C and turns every way that can fail into an ImportError that says what to run."""
import importlib

BUILD_CMD = "pip install -e .   (in the dlkern checkout, with torch installed)"


def build_info() -> dict:
    """What dlkern._C was built with: torch version, cuda (0/1), openmp (its version or 0)."""
    import torch
    return dict(kv.split("=", 1) for kv in torch.ops.dlkern._build_info().split(";"))


def load_extension():
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "dlkern needs PyTorch, which is not importable here "
            f"({e}). Install it first, e.g. `pip install torch==2.13.0`, then build dlkern with: "
            + BUILD_CMD) from None
    try:
        importlib.import_module("dlkern._C")
    except (ImportError, OSError) as e:
        raise ImportError(
            "dlkern's compiled extension dlkern._C is missing or could not be loaded "
            f"({e}). It is built against the installed torch ({torch.__version__}); build or "
            "rebuild it with: " + BUILD_CMD) from None
    info = build_info()
    if info.get("torch") != torch.__version__:
        raise ImportError(
            f"dlkern._C was built against torch {info.get('torch')} but torch "
            f"{torch.__version__} is installed; rebuild it with: " + BUILD_CMD)
    return info
