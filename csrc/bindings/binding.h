// What every op's binding file shares (each file holds one op whole: its schemas, argument
// checks, one device-generic kernel, its autograd node and its registration):
//   - argument checks: every failure a user can reach becomes a Python exception whose message
//     starts with "dlkern.<op>:" and names the argument, what was expected and what was given
//     (TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_INDEX -> IndexError, TORCH_CHECK_VALUE ->
//     ValueError, TORCH_CHECK -> RuntimeError);
//   - run(): one core call on the tensor's device (CPU threads, or a CUDA stream and scratch);
//   - register_op(): a kernel for CPU and CUDA plus an autograd kernel, in one line;
//   - autograd helpers: a node that saves tensors, and record_backward() to attach one.
// Autograd nodes are written in C++ rather than registered from Python: a Python autograd kernel
// costs microseconds per call, more than torch's whole softmax on a small input (docs/architecture.md).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "../core/common.h"

#ifdef DLKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dlkern {
namespace bind {

using OptTensor = c10::optional<at::Tensor>;
using Grads3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

inline bool has(const OptTensor& t) { return t.has_value() && t->defined(); }
inline at::Tensor or_undefined(const OptTensor& t) { return has(t) ? *t : at::Tensor(); }

// ---- argument checks ------------------------------------------------------------------------

inline void check_float32(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), "dlkern.", op, ": argument '", arg, "' must be a tensor, got None");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "dlkern.", op, ": argument '", arg,
                   "' must be a float32 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "dlkern.", op, ": argument '", arg,
                    "' must be a dense (strided) tensor, got layout ", t.layout());
}

inline void check_same_device(const char* op, const char* a, const at::Tensor& ta, const char* b,
                              const at::Tensor& tb) {
  TORCH_CHECK_VALUE(ta.device() == tb.device(), "dlkern.", op, ": arguments '", a, "' and '", b,
                    "' must be on the same device, got ", ta.device(), " and ", tb.device());
}

inline void check_same_shape(const char* op, const char* a, const at::Tensor& ta, const char* b,
                             const at::Tensor& tb) {
  TORCH_CHECK_VALUE(ta.sizes() == tb.sizes(), "dlkern.", op, ": arguments '", a, "' and '", b,
                    "' must have the same shape, got ", ta.sizes(), " and ", tb.sizes());
}

// A float32 tensor on input's device, of the given shape (the gradient a backward op receives).
inline void check_grad_output(const char* op, const at::Tensor& grad_output,
                              const at::Tensor& input, at::IntArrayRef shape) {
  check_float32(op, "grad_output", grad_output);
  check_same_device(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK_VALUE(grad_output.sizes() == shape, "dlkern.", op, ": argument 'grad_output' must ",
                    "have shape ", shape, ", got ", grad_output.sizes());
}

// Wraps a possibly negative dim like torch does; a 0-d tensor accepts dim 0 and -1.
inline int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  const int64_t n = ndim == 0 ? 1 : ndim;
  TORCH_CHECK_INDEX(dim >= -n && dim < n, "dlkern.", op, ": argument 'dim' out of range: expected ",
                    "a value in [", -n, ", ", n - 1, "] for a ", ndim, "-d input, got ", dim);
  return dim < 0 ? dim + n : dim;
}

inline const float* in_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<float>() : nullptr;
}
// The data pointer of an optional output (a gradient the mask did not ask for is undefined).
inline float* out_ptr(at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<float>() : nullptr; }

// The gradients a backward op was asked for: an empty tensor of each wanted shape, else undefined.
inline Grads3 empty_grads(const std::array<bool, 3>& mask, at::IntArrayRef s0, at::IntArrayRef s1,
                          at::IntArrayRef s2, const at::TensorOptions& opt) {
  auto make = [&](bool want, at::IntArrayRef s) { return want ? at::empty(s, opt) : at::Tensor(); };
  return {make(mask[0], s0), make(mask[1], s1), make(mask[2], s2)};
}

inline void check_status(const char* op, Status s) {
  if (s == Status::kOk) return;
  const std::string detail = status_detail();
  set_status_detail("");  // reported once
  TORCH_CHECK(false, "dlkern.", op, ": kernel failed: ", status_string(s),
              detail.empty() ? "" : " (", detail, detail.empty() ? "" : ")");
}

// ---- one core call on the tensor's device ---------------------------------------------------

// What a CUDA core call needs besides its tensors: torch's current stream and scratch memory
// (split-K partials, per-channel constants) from torch's caching allocator, whose blocks are
// 512-byte aligned (the core asks for 16) and stream-ordered. The scratch lives as long as this.
class Cuda {
 public:
  explicit Cuda(const at::Tensor& like) : like_(like) {}
  void* scratch(size_t bytes) {
    ws_ = at::empty({static_cast<int64_t>(bytes)}, like_.options().dtype(at::kByte));
    return ws_.mutable_data_ptr();
  }
  size_t scratch_bytes() const { return static_cast<size_t>(ws_.numel()); }
  void* stream() const;

 private:
  const at::Tensor& like_;
  at::Tensor ws_;
};

// A CUDA tensor in a build without CUDA kernels (DLKERN_FORCE_CPU=1, or torch's CUDA appeared
// after the build): the one message, saying how to rebuild.
[[noreturn]] inline void no_cuda_kernels(const std::string& op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "dlkern.", op, ": got a CUDA tensor, but this build of ",
                              "dlkern has no CUDA kernels (it was built without CUDA); rebuild ",
                              "with a CUDA torch and nvcc: pip install --no-build-isolation -e .");
}

// Runs one core call where `x` lives: cpu(threads) on the CPU (torch's intra-op thread count), or
// cuda(Cuda&) under a guard for x's CUDA device. The CUDA call is a generic lambda
// ([&](auto& c) {...}): in a build without CUDA its body, which names the core's CUDA entry
// points, is never instantiated.
template <typename CpuCall, typename CudaCall>
void run(const char* op, const at::Tensor& x, CpuCall&& cpu, CudaCall&& cuda) {
  if (!x.is_cuda()) return check_status(op, cpu(at::get_num_threads()));
#ifdef DLKERN_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  Cuda context(x);
  check_status(op, cuda(context));
#else
  (void)cuda;
  no_cuda_kernels(op);  // unreachable through the dispatcher (register_op), kept for direct calls
#endif
}

#ifdef DLKERN_WITH_CUDA
inline void* Cuda::stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

// ---- registration ---------------------------------------------------------------------------

#ifndef DLKERN_WITH_CUDA
// The CUDA kernel of every op in a build without CUDA: refuses before any argument check or
// allocation, as a stub per op would, naming the op (its schema name without "dlkern::").
inline void no_cuda_kernel(const c10::OperatorHandle& op, torch::jit::Stack*) {
  const std::string& name = op.schema().name();
  no_cuda_kernels(name.substr(name.find("::") + 2));
}
#endif

// Registers `kernel` (device-generic: it calls run()) for CPU and CUDA, and `autograd` for the
// Autograd key, under the schema `name` that the same file defines.
template <typename Kernel, typename Autograd>
void register_op(torch::Library& m, const char* name, Kernel* kernel, Autograd&& autograd) {
  m.impl(name, torch::dispatch(c10::DispatchKey::CPU, kernel));
#ifdef DLKERN_WITH_CUDA
  m.impl(name, torch::dispatch(c10::DispatchKey::CUDA, kernel));
#else
  m.impl(name, torch::dispatch(c10::DispatchKey::CUDA,
                               torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernel>()));
#endif
  m.impl(name, torch::dispatch(c10::DispatchKey::Autograd, std::forward<Autograd>(autograd)));
}

// Calls the op registered as `name` whose kernel is Kernel through the dispatcher (so the
// autograd kernels reach the device kernels, and torch.compile's fake ones), without spelling
// its C++ signature again: it is Kernel's own.
template <auto& Kernel, typename... Args>
decltype(auto) call(const char* name, Args&&... args) {
  using Sig = std::remove_reference_t<decltype(Kernel)>;
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
  return op.call(std::forward<Args>(args)...);
}

// ---- autograd -------------------------------------------------------------------------------

// torch 2.13 holds autograd nodes in c10::intrusive_ptr, older releases in std::shared_ptr; the
// pointer type is read off Edge::function and the two spellings are chosen at compile time (the
// untaken branch is never instantiated, so each torch sees only its own API).
using NodePtr = decltype(std::declval<torch::autograd::Edge>().function);
constexpr bool kIntrusiveNodes = !std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>;

template <typename T>
inline auto make_node() {
  if constexpr (kIntrusiveNodes && sizeof(T) > 0)
    return c10::make_intrusive<T>();
  else
    return std::make_shared<T>();
}

template <typename T>
inline NodePtr node_ptr(T* self) {
  if constexpr (kIntrusiveNodes && sizeof(T) > 0)
    return c10::intrusive_ptr<torch::autograd::Node>::unsafe_reclaim_from_nonowning(self);
  else
    return self->shared_from_this();
}

// Without a gradient to record, skip building an autograd node: that is a measurable share of a
// small op's runtime.
inline bool needs_graph(const at::Tensor& a) {
  return at::GradMode::is_enabled() && a.defined() && a.requires_grad();
}

// A backward node that saves K tensors (saved[i]) and frees them when the graph is released.
template <size_t K>
struct SavingNode : public torch::autograd::Node {
  std::array<torch::autograd::SavedVariable, K> saved;

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& s : saved) s.reset_data();
  }
  // which of the first N inputs the graph wants gradients for
  template <size_t N>
  std::array<bool, N> wanted() const {
    std::array<bool, N> m{};
    for (size_t i = 0; i < N; ++i) m[i] = should_compute_output(i);
    return m;
  }
};

// When any of `inputs` (undefined ones allowed) requires grad: builds a Node, makes it the
// gradient function of `output` with edges to the inputs, then lets fill(node) save what it needs
// (after the history is set, so an output can be saved as one).
template <typename Node, typename Fill, typename... Inputs>
void record_backward(const at::Tensor& output, Fill&& fill, const Inputs&... inputs) {
  if (!(needs_graph(inputs) || ...)) return;
  auto node = make_node<Node>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  torch::autograd::set_history(output, node);
  fill(*node);
}

}  // namespace bind
}  // namespace dlkern
