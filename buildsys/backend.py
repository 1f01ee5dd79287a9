"""dlkern's PEP 517 build backend: setuptools' own, made to see the torch already installed.

Plain `pip install -e .` builds in an isolated environment that holds only the packages of
[build-system].requires. Listing torch there would make pip download a torch into it (a
multi-GB CUDA build, whatever torch you have) and compile dlkern against that one. Instead,
when torch is not importable in the build, this backend asks the interpreter that runs it,
outside pip's isolation, for its import path -- the path dlkern will be imported from once
installed -- and appends it to the build's. The build requirements (setuptools, ninja) come
first, so they win; torch, and what it imports, comes from your environment. So the torch
dlkern compiles against is the torch that will load it, and nothing is downloaded in its place.

Without isolation (`pip install --no-build-isolation -e .`) torch is importable already and
nothing is added.
"""
import importlib.util
import json
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook PEP 517 and 660 name)

NO_TORCH = """
dlkern: torch is not installed in this environment ({python}).
dlkern compiles its kernels against the torch that will load them, so install torch first,
for example the version dlkern is tested with:

    pip install torch==2.13.0

(or the build your machine needs), then run `pip install -e .` again. If torch is installed
and you still see this, your installer builds with an interpreter of its own (uv, or
`python -m build`), or your torch comes from PYTHONPATH, which pip's isolation drops: build
without isolation then (`pip install --no-build-isolation -e .`, `python -m build
--no-isolation`; with setuptools >= 77 and ninja installed).
"""

# pip's isolation: PYTHONPATH points at its own sitecustomize, which drops the environment's
# site-packages; PYTHONNOUSERSITE=1 drops the user's.
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE")
_PROBE = ("import importlib.util, json, sys; s = importlib.util.find_spec('torch'); "
          "print(json.dumps([sys.path, s.origin if s else None]))")


def _torch_importable() -> bool:
    return importlib.util.find_spec("torch") is not None


def _add_environment_path() -> None:
    """Appends the import path this interpreter has outside pip's isolation."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    path, torch_init = json.loads(out.stdout)
    sys.path.extend(p for p in path if p and p not in sys.path)
    if torch_init and not _torch_importable():
        # torch found by an import hook that a .pth file installs (an editable torch), which
        # appending path entries does not run: add the directory that holds the package.
        sys.path.append(os.path.dirname(os.path.dirname(torch_init)))


# Every hook runs in a fresh process that imports this module, so the path is set up here once.
if not _torch_importable():
    _add_environment_path()


def _require_torch():
    if not _torch_importable():
        sys.stderr.write(NO_TORCH.format(python=sys.executable))
        raise SystemExit("dlkern: install torch first (e.g. `pip install torch==2.13.0`), "
                         "then `pip install -e .`")


def get_requires_for_build_wheel(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_editable(config_settings)
