"""dlkern's PEP 517 build backend: setuptools' own, made to see the torch already installed.

Plain `pip install -e .` builds in an isolated environment that holds only the packages of
[build-system].requires. Listing torch there would make pip download a torch into it (a
multi-GB CUDA build, whatever torch you have) and compile dlkern against that one. Instead
this backend asks the interpreter that runs the build, outside pip's isolation, for its import
path -- the path dlkern will be imported from once installed -- and appends it to the isolated
build's. The build requirements (setuptools, ninja) come first, so they win; torch, and what it
imports, comes from your environment. So the torch dlkern compiles against is the torch that
will load it, and nothing is ever downloaded in its place.

`pip install --no-build-isolation -e .` goes through the same code, which then adds nothing.
"""
import json
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook PEP 517 and 660 name)

NO_TORCH = """
dlkern: torch is not installed in this environment ({python}).
dlkern compiles its kernels against the torch that will load them, so install torch first,
for example the CPU build:

    pip install torch==2.13.0

(or the CUDA build your machine needs), then run `pip install -e .` again.
"""

# pip's isolation: PYTHONPATH points at its own sitecustomize, which drops the environment's
# site-packages; PYTHONNOUSERSITE=1 drops the user's.
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE")
_PROBE = ("import importlib.util, json, sys; s = importlib.util.find_spec('torch'); "
          "print(json.dumps([sys.path, s.origin if s else None]))")


def _environment_path():
    """(sys.path, torch's __init__.py or None) of this interpreter outside pip's isolation."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


# Every hook runs in a fresh process that imports this module, so the path is set up here once.
_path, _torch_init = _environment_path()
sys.path.extend(p for p in _path if p and p not in sys.path)


def _require_torch():
    if _torch_init is None:
        sys.stderr.write(NO_TORCH.format(python=sys.executable))
        raise SystemExit("dlkern: install torch first (e.g. `pip install torch==2.13.0`), "
                         "then `pip install -e .`")


def get_requires_for_build_wheel(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _require_torch()
    return _setuptools.get_requires_for_build_editable(config_settings)
