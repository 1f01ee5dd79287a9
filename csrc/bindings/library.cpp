// The dlkern library itself (TORCH_LIBRARY: what is not per op: introspection and machine
// probes), plus the Python module stub that makes `import dlkern._C` load this extension (which
// runs every registration). Each op's schemas, kernels and autograd are in its own file
// (softmax.cpp, ...), added to the library with TORCH_LIBRARY_FRAGMENT.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "../core/common.h"
#include "../core/machine.h"

#ifndef DLKERN_TORCH_VERSION
#error "setup.py defines DLKERN_TORCH_VERSION (the torch this extension is built against)"
#endif

namespace {

std::string cpu_isa() { return dlkern::cpu_isa_name(dlkern::cpu_isa_active()); }
std::string cpu_isa_best() { return dlkern::cpu_isa_name(dlkern::cpu_isa_best()); }

void set_cpu_isa(std::string name) {
  dlkern::CpuIsa isa;
  const dlkern::Status s = dlkern::cpu_isa_parse(name.c_str(), &isa);
  TORCH_CHECK_VALUE(s != dlkern::Status::kInvalidArgument, "dlkern.set_cpu_isa: argument 'name' ",
                    "must be one of 'auto', 'reference', 'avx2', 'avx512', got '", name, "'");
  TORCH_CHECK_VALUE(s == dlkern::Status::kOk, "dlkern.set_cpu_isa: this CPU does not support '",
                    name, "' (best available: '", cpu_isa_best(), "')");
  dlkern::cpu_isa_select(isa);
}

std::string build_info() {
  std::string s = "torch=" DLKERN_TORCH_VERSION;
#ifdef DLKERN_WITH_CUDA
  s += ";cuda=1";
#else
  s += ";cuda=0";
#endif
#ifdef _OPENMP
  s += ";openmp=" + std::to_string(_OPENMP);
#else
  s += ";openmp=0";
#endif
  return s;
}

// Machine probes for the benchmark reports' roofline columns. 0 means "this CPU lacks the ISA".
double cpu_fma_peak(int64_t width, int64_t threads, double seconds) {
  double g = 0;
  const dlkern::Status s = dlkern::cpu_fma_peak(static_cast<int>(width), static_cast<int>(threads),
                                                seconds, &g);
  TORCH_CHECK_VALUE(s != dlkern::Status::kInvalidArgument, "dlkern._cpu_fma_peak: expected width ",
                    "256 or 512, threads >= 1 and seconds > 0, got ", width, ", ", threads, ", ",
                    seconds);
  return s == dlkern::Status::kOk ? g : 0.0;
}

double cpu_stream_bandwidth(int64_t bytes, int64_t threads, double seconds) {
  double g = 0;
  const dlkern::Status s = dlkern::cpu_stream_copy_bandwidth(bytes, static_cast<int>(threads),
                                                             seconds, &g);
  TORCH_CHECK_VALUE(s == dlkern::Status::kOk, "dlkern._cpu_stream_bandwidth: expected bytes >= ",
                    "4096 (and that much free memory, twice), threads >= 1 and seconds > 0, got ",
                    bytes, ", ", threads, ", ", seconds);
  return g;
}

}  // namespace

TORCH_LIBRARY(dlkern, m) {
  // introspection, used by dlkern.capabilities() and dlkern.set_cpu_isa()
  m.def("_cpu_isa() -> str", &cpu_isa);
  m.def("_cpu_isa_best() -> str", &cpu_isa_best);
  m.def("_set_cpu_isa(str name) -> ()", &set_cpu_isa);
  m.def("_build_info() -> str", &build_info);
  // machine probes, used by bench/ for peak FLOP/s and bandwidth (csrc/core/machine.h)
  m.def("_cpu_fma_peak(int width, int threads, float seconds) -> float", &cpu_fma_peak);
  m.def("_cpu_stream_bandwidth(int bytes, int threads, float seconds) -> float",
        &cpu_stream_bandwidth);
}

// A module with no methods: everything is reached through torch.ops.dlkern.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
