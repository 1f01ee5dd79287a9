import importlib.util
import sys

import pytest

# Run in a Python without torch or dlkern (the README installs both first), the tests would stop
# at the imports below with a collection traceback; say what to do in one line instead.
_missing = [m for m in ("torch", "dlkern") if importlib.util.find_spec(m) is None]
if _missing:
    pytest.exit(f"tests/ need {' and '.join(_missing)} in this Python ({sys.executable}): "
                "pip install torch==2.13.0 && pip install -e \".[test]\" (README, Quick start)",
                returncode=4)

import torch  # noqa: E402

import dlkern  # noqa: E402
from dlkern import registry  # noqa: E402

ALL_ISAS = registry.CPU_ISAS


def isa_params():
    """Every CPU path, the ones this CPU cannot run skipped with the reason."""
    have = registry.cpu_variants()
    return [pytest.param(name, id=name, marks=() if name in have else pytest.mark.skip(
        reason=f"this CPU cannot run the {name} path (best: {dlkern.capabilities()['cpu_isa_best']})"))
        for name in ALL_ISAS]


@pytest.fixture(params=isa_params())
def isa(request):
    with dlkern.cpu_isa(request.param):
        yield request.param


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
