import pytest
import torch

import dlkern
from dlkern import registry

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
