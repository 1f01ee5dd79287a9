"""Builds dlkern._C against the torch already installed.

    pip install -e .

pip runs this through buildsys/backend.py, which lets pip's isolated build environment see the
torch installed where dlkern is being installed (why: that file's docstring).
`pip install --no-build-isolation -e .` works as well and skips the isolated environment.

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

try:
    import torch
    from torch.utils import cpp_extension
except ImportError as e:
    raise SystemExit(f"dlkern: torch is not importable ({e}); dlkern compiles against the torch "
                     "that will load it, so install it first (e.g. `pip install torch==2.13.0`), "
                     "then `pip install -e .`")

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

# where torch's CUDA builder looks for the toolkit's headers (CUDA_INC_PATH: CMake's variable)
cuda_includes = [os.path.join(cpp_extension.CUDA_HOME or "", *sub) for sub in
                 (("include",), ("targets", "x86_64-linux", "include"))]
cuda_includes += [os.environ["CUDA_INC_PATH"]] if os.environ.get("CUDA_INC_PATH") else []
if with_cuda and not any(os.path.isfile(os.path.join(d, "cuda_runtime.h")) for d in cuda_includes):
    raise SystemExit(f"dlkern: the CUDA toolkit torch found at CUDA_HOME={cpp_extension.CUDA_HOME} "
                     "has no include/cuda_runtime.h (is nvcc a wrapper script?); set CUDA_HOME to "
                     "the toolkit's folder (e.g. CUDA_HOME=/usr/local/cuda), or build the CPU "
                     "kernels only with DLKERN_FORCE_CPU=1")

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
    packages=find_packages(include=["dlkern", "dlkern.*", "bench", "bench.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
