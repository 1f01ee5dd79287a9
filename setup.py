"""Builds dlkern._C against the torch already installed.

    pip install --no-build-isolation -e .

Environment variables:
    DLKERN_FORCE_CPU=1     build only the CPU kernels even with a CUDA torch and nvcc
    DEBUG=1                -O0 -g, no NDEBUG
    MAX_JOBS=N             parallel compile jobs (read by torch's ninja builder)
    TORCH_CUDA_ARCH_LIST   CUDA architectures, e.g. "8.0;9.0" (read by torch's CUDA builder)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

NO_TORCH = """
dlkern builds its kernels against the torch that is already installed, and this build
environment has no torch: plain `pip install -e .` builds in an isolated environment, and letting
pip install torch there would download a different (multi-GB CUDA) torch. Run instead:

    pip install torch==2.13.0          # if torch is not installed yet
    pip install --no-build-isolation -e .
"""

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.stderr.write(NO_TORCH)
    raise SystemExit("dlkern: torch is not importable in this build environment; "
                     "use `pip install --no-build-isolation -e .`")

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(*patterns):
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join(ROOT, p)))
    return [os.path.relpath(s, ROOT) for s in out]


def truthy(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


debug = truthy("DEBUG")
force_cpu = truthy("DLKERN_FORCE_CPU")
with_cuda = (not force_cpu and torch.version.cuda is not None
             and cpp_extension.CUDA_HOME is not None)

cpu_sources = sources("csrc/core/*.cpp", "csrc/core/ref/*.cpp", "csrc/core/cpu/*.cpp",
                      "csrc/bindings/*.cpp")
cuda_sources = sources("csrc/core/cuda/*.cu") if with_cuda else []

opt = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
defines = [f'-DDLKERN_TORCH_VERSION="{torch.__version__}"']
if with_cuda:
    defines.append("-DDLKERN_WITH_CUDA")
cxx_flags = opt + defines + ["-std=c++17", "-fopenmp", "-Wall", "-Wno-unused-parameter"]
nvcc_flags = opt + defines + ["-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]

Extension = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
ext = Extension(
    name="dlkern._C",
    sources=cpu_sources + cuda_sources,
    include_dirs=[os.path.join(ROOT, "csrc")],
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else cxx_flags,
    extra_link_args=["-fopenmp"],
)

print(f"dlkern: building {'CPU + CUDA' if with_cuda else 'CPU'} kernels against torch "
      f"{torch.__version__}" + (" (DLKERN_FORCE_CPU=1)" if force_cpu else ""), file=sys.stderr)

setup(
    packages=find_packages(include=["dlkern", "dlkern.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
