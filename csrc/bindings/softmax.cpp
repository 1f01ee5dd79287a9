// dlkern::softmax and dlkern::softmax_backward: CPU (and CUDA when built) kernels and autograd.
//
// Autograd is registered here in C++ at the Autograd key (a hand-written backward Node for
// softmax, a torch::autograd::Function for softmax_backward's double backward) rather than
// with torch.library.register_autograd in Python: a Python autograd kernel costs ~6 us per
// forward and ~25 us per forward+backward (measured on our 2-core machine), more than torch's
// whole softmax on a 128x64 input. Fake (meta) kernels for torch.compile are in Python
// (dlkern/ops/softmax.py). The backward op has its own autograd, so double backward works.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>

#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#ifdef DLKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "../core/softmax.h"
#include "autograd_node.h"
#include "checks.h"

namespace {

using dlkern::SoftmaxShape;
namespace bind = dlkern::bind;

SoftmaxShape shape_of(const at::Tensor& t, int64_t dim) {
  SoftmaxShape s;
  if (t.dim() == 0) return s;  // 0-d: one line of one element
  for (int64_t d = 0; d < dim; ++d) s.outer *= t.size(d);
  s.dim = t.size(dim);
  for (int64_t d = dim + 1; d < t.dim(); ++d) s.inner *= t.size(d);
  return s;
}

// Validates, wraps dim, returns contiguous inputs and the [outer, dim, inner] view.
struct FwdArgs {
  at::Tensor x;
  SoftmaxShape shape;
};
FwdArgs prepare_fwd(const at::Tensor& input, int64_t dim) {
  bind::check_float32("softmax", "input", input);
  const int64_t d = bind::wrap_dim("softmax", dim, input.dim());
  at::Tensor x = input.contiguous();
  return {x, shape_of(x, d)};
}

struct BwdArgs {
  at::Tensor g, y;
  SoftmaxShape shape;
};
BwdArgs prepare_bwd(const at::Tensor& grad_output, const at::Tensor& output, int64_t dim) {
  bind::check_float32("softmax_backward", "grad_output", grad_output);
  bind::check_float32("softmax_backward", "output", output);
  bind::check_same_device("softmax_backward", "grad_output", grad_output, "output", output);
  bind::check_same_shape("softmax_backward", "grad_output", grad_output, "output", output);
  const int64_t d = bind::wrap_dim("softmax_backward", dim, output.dim());
  at::Tensor y = output.contiguous();
  return {grad_output.contiguous(), y, shape_of(y, d)};
}

at::Tensor softmax_cpu(const at::Tensor& input, int64_t dim) {
  FwdArgs a = prepare_fwd(input, dim);
  at::Tensor y = at::empty(a.x.sizes(), a.x.options());
  bind::check_status("softmax", dlkern::softmax_fwd_cpu(a.shape, a.x.const_data_ptr<float>(),
                                                        y.mutable_data_ptr<float>(),
                                                        at::get_num_threads()));
  return y;
}

at::Tensor softmax_backward_cpu(const at::Tensor& grad_output, const at::Tensor& output,
                                int64_t dim) {
  BwdArgs a = prepare_bwd(grad_output, output, dim);
  at::Tensor dx = at::empty(a.y.sizes(), a.y.options());
  bind::check_status("softmax_backward",
                     dlkern::softmax_bwd_cpu(a.shape, a.y.const_data_ptr<float>(),
                                             a.g.const_data_ptr<float>(),
                                             dx.mutable_data_ptr<float>(), at::get_num_threads()));
  return dx;
}

#ifdef DLKERN_WITH_CUDA
at::Tensor softmax_cuda(const at::Tensor& input, int64_t dim) {
  FwdArgs a = prepare_fwd(input, dim);
  const c10::cuda::CUDAGuard guard(a.x.device());
  at::Tensor y = at::empty(a.x.sizes(), a.x.options());
  bind::check_status("softmax", dlkern::softmax_fwd_cuda(a.shape, a.x.const_data_ptr<float>(),
                                                         y.mutable_data_ptr<float>(),
                                                         c10::cuda::getCurrentCUDAStream().stream()));
  return y;
}

at::Tensor softmax_backward_cuda(const at::Tensor& grad_output, const at::Tensor& output,
                                 int64_t dim) {
  BwdArgs a = prepare_bwd(grad_output, output, dim);
  const c10::cuda::CUDAGuard guard(a.y.device());
  at::Tensor dx = at::empty(a.y.sizes(), a.y.options());
  bind::check_status("softmax_backward",
                     dlkern::softmax_bwd_cuda(a.shape, a.y.const_data_ptr<float>(),
                                              a.g.const_data_ptr<float>(),
                                              dx.mutable_data_ptr<float>(),
                                              c10::cuda::getCurrentCUDAStream().stream()));
  return dx;
}
#else
at::Tensor softmax_no_cuda(const at::Tensor&, int64_t) { bind::no_cuda_kernels("softmax"); }
at::Tensor softmax_backward_no_cuda(const at::Tensor&, const at::Tensor&, int64_t) {
  bind::no_cuda_kernels("softmax_backward");
}
#endif

// ---- autograd ---------------------------------------------------------------------------

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_softmax(const at::Tensor& x, int64_t dim) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::softmax", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(x, dim);
}

at::Tensor call_softmax_backward(const at::Tensor& g, const at::Tensor& y, int64_t dim) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::softmax_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(g, y, dim);
}

// First-order backward node, written like torch's generated SoftmaxBackward0 (a Node holding the
// saved output and dim as members) rather than a torch::autograd::Function, whose per-call
// bookkeeping (a string-keyed saved_data map, CppNode wrapping) is a visible share of a small
// softmax's forward+backward. Its backward calls dlkern::softmax_backward through the
// dispatcher, so create_graph=True reaches that op's own autograd below.
struct SoftmaxBackwardNode final : public torch::autograd::Node {
  torch::autograd::SavedVariable result_;
  int64_t dim_ = 0;

  std::string name() const override { return "DlkernSoftmaxBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    result_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_softmax_backward(g, result_.unpack(bind::node_ptr(this)), dim_)};
  }
};

// dx = y * (g - s), s = sum_d(g * y). For an upstream gradient u of dx:
//   d/dg = y * (u - sum_d(u * y))                 = softmax_backward(u, y)
//   d/dy = u * (g - s) - g * sum_d(u * y)
class SoftmaxBackwardFunction : public torch::autograd::Function<SoftmaxBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& y,
                            int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({g, y});
    ctx->saved_data["dim"] = dim;
    return call_softmax_backward(g, y, dim);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &g = saved[0], &y = saved[1], &u = grads[0];
    if (!u.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const int64_t dim = ctx->saved_data["dim"].toInt();
    // A 0-d tensor's only line is the tensor itself.
    auto line_sum = [&](const at::Tensor& t) { return y.dim() == 0 ? t : t.sum(dim, true); };
    const at::Tensor s = line_sum(g * y);
    const at::Tensor uy = line_sum(u * y);
    return {call_softmax_backward(u, y, dim), u * (g - s) - g * uy, at::Tensor()};
  }
};

at::Tensor softmax_autograd(const at::Tensor& x, int64_t dim) {
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = call_softmax(x, dim);
  }
  if (bind::needs_graph(x)) {
    auto node = bind::make_node<SoftmaxBackwardNode>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->dim_ = dim;
    torch::autograd::set_history(y, node);
    node->result_ = torch::autograd::SavedVariable(y, /*is_output=*/true);
  }
  return y;
}

at::Tensor softmax_backward_autograd(const at::Tensor& g, const at::Tensor& y, int64_t dim) {
  if (!bind::needs_graph(g) && !bind::needs_graph(y)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_softmax_backward(g, y, dim);
  }
  return SoftmaxBackwardFunction::apply(g, y, dim);
}

}  // namespace

TORCH_LIBRARY_IMPL(dlkern, CPU, m) {
  m.impl("softmax", &softmax_cpu);
  m.impl("softmax_backward", &softmax_backward_cpu);
}

TORCH_LIBRARY_IMPL(dlkern, CUDA, m) {
#ifdef DLKERN_WITH_CUDA
  m.impl("softmax", &softmax_cuda);
  m.impl("softmax_backward", &softmax_backward_cuda);
#else
  m.impl("softmax", &softmax_no_cuda);
  m.impl("softmax_backward", &softmax_backward_no_cuda);
#endif
}

TORCH_LIBRARY_IMPL(dlkern, Autograd, m) {
  m.impl("softmax", &softmax_autograd);
  m.impl("softmax_backward", &softmax_backward_autograd);
}
