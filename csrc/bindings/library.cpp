// The one place that declares dlkern's operator schemas, plus the Python module stub that makes
// `import dlkern._C` load this library (which runs the registrations below). Each op's kernels
// are registered in its own file (softmax.cpp, ...) with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "../core/common.h"
#include "../core/machine.h"
#include "checks.h"

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
                    "must be one of 'auto', 'reference', 'avx2', got '", name, "'");
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
  // softmax (csrc/bindings/softmax.cpp)
  m.def("softmax(Tensor input, int dim) -> Tensor");
  m.def("softmax_backward(Tensor grad_output, Tensor output, int dim) -> Tensor");

  // linear (csrc/bindings/linear.cpp)
  m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");

  // batch_norm (csrc/bindings/batchnorm.cpp): returns (output, save_mean, save_invstd) and
  // updates the running statistics in place when training
  m.def("batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // conv2d (csrc/bindings/conv2d.cpp): padding is [top, bottom, left, right]
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // the algorithm conv2d picks for these arguments (gemm1x1, im2col or depthwise)
  m.def("_conv2d_algorithm(Tensor input, Tensor weight, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups) -> str");

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
