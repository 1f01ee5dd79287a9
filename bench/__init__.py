"""dlkern's benchmark harness. Every timing is preceded by a correctness check (dlkern.testing).

The Python API (bench/api.py): bench.run(...) -> a pandas DataFrame, bench.ratios(df),
bench.compare_frames(old, new). Imported on first use, so the command lines need no pandas."""

_API = ("run", "ratios", "compare_frames")


def __getattr__(name):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
