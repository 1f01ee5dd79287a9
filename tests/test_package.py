"""The package around the kernels: loading, capabilities, CPU path selection, thread control."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dlkern
from dlkern import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, env=None, cwd=ROOT):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=e, cwd=cwd, timeout=120)


def test_capabilities():
    caps = dlkern.capabilities()
    assert set(caps) >= {"cpu_isa", "cpu_isa_best", "openmp", "openmp_threads", "cuda_built",
                         "gpu_visible", "torch"}
    assert caps["cpu_isa"] in registry.CPU_ISAS
    assert caps["torch"] == torch.__version__
    assert caps["openmp"], "dlkern was built without OpenMP"
    assert caps["gpu_visible"] == torch.cuda.is_available()


def test_threads_follow_torch(threads):
    torch.set_num_threads(1)
    assert dlkern.capabilities()["openmp_threads"] == 1
    torch.set_num_threads(2)
    assert dlkern.capabilities()["openmp_threads"] == 2


def test_set_cpu_isa_and_context_manager():
    best = dlkern.capabilities()["cpu_isa_best"]
    with dlkern.cpu_isa("reference"):
        assert dlkern.capabilities()["cpu_isa"] == "reference"
    assert dlkern.capabilities()["cpu_isa"] == best
    with pytest.raises(ValueError, match=r"must be one of 'auto', 'reference', 'avx2', 'avx512', got 'sse9'"):
        dlkern.set_cpu_isa("sse9")


def test_env_var_forces_reference_path():
    r = _python("import dlkern; print(dlkern.capabilities()['cpu_isa'])",
                {"DLKERN_CPU_ISA": "reference"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "reference"


def test_env_var_selects_avx512_or_says_the_cpu_lacks_it():
    r = _python("import dlkern; print(dlkern.capabilities()['cpu_isa'])",
                {"DLKERN_CPU_ISA": "avx512"})
    if "avx512" in registry.cpu_variants():
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "avx512"
    else:
        assert r.returncode != 0
        assert "DLKERN_CPU_ISA='avx512'" in r.stderr and "does not support 'avx512'" in r.stderr


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            line = next(l for l in f if l.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags line (not Linux x86)")
    return set(line.split(":", 1)[1].split())


def test_detection_agrees_with_the_kernel_s_cpu_flags():
    # Linux lists a feature only when the kernel enabled its register state, so its flags are an
    # outside check of dlkern's cpuid + XGETBV detection
    flags = _cpuinfo_flags()
    want = ("avx512" if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags else
            "avx2" if {"avx2", "fma"} <= flags else "reference")
    assert dlkern.capabilities()["cpu_isa_best"] == want


def test_cpu_paths_are_ordered_and_best_is_the_default():
    have = list(registry.cpu_variants())
    best = dlkern.capabilities()["cpu_isa_best"]
    assert have == list(registry.CPU_ISAS[:registry.CPU_ISAS.index(best) + 1])
    r = _python("import dlkern; print(dlkern.capabilities()['cpu_isa'])", {"DLKERN_CPU_ISA": ""})
    assert r.stdout.strip() == best, r.stderr


def test_env_var_invalid_value_is_an_import_error_naming_it():
    r = _python("import dlkern", {"DLKERN_CPU_ISA": "sse9"})
    assert r.returncode != 0
    assert "DLKERN_CPU_ISA='sse9'" in r.stderr, r.stderr


def test_harness_runs_from_outside_the_checkout(tmp_path):
    # `python -m bench.layers` as a user types it elsewhere: the harness is installed with
    # dlkern, not merely importable from the checkout's directory.
    for module in ("bench.layers", "bench.models"):
        r = subprocess.run([sys.executable, "-m", module, "--list"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "implementations:" in r.stdout, r.stdout


def test_missing_extension_says_how_to_build():
    # Make `dlkern._C` unimportable, as in a checkout that was never built.
    r = _python("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "dlkern._C":
                    raise ImportError("No module named 'dlkern._C'")
        sys.meta_path.insert(0, Block())
        import dlkern
    """)
    assert r.returncode != 0
    assert "pip install -e ." in r.stderr, r.stderr
    assert "dlkern._C" in r.stderr


def test_extension_built_for_other_torch_is_refused():
    r = _python("""
        import torch
        torch.__version__ = "0.0.1-other"
        import dlkern
    """)
    assert r.returncode != 0
    assert "built against torch" in r.stderr and "0.0.1-other" in r.stderr, r.stderr
