// dlkern::linear and dlkern::linear_backward: CPU kernels (the GEMM core, csrc/core/dense.h) and
// a hand-written autograd node, as for softmax: a Python autograd kernel would cost more than a
// small linear's whole forward. Fake kernels are in dlkern/ops/linear.py.
//
// Inputs are not made contiguous: the core takes strided 2-D views, so a transposed or sliced
// weight is packed by the GEMM rather than copied here.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>

#include <mutex>
#include <tuple>
#include <vector>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "../core/dense.h"
#include "autograd_node.h"
#include "checks.h"

namespace {

namespace bind = dlkern::bind;
using dlkern::MatrixRef;

// Rows of the 2-D view of a (..., features) tensor: the product of its leading dimensions (not
// numel / features, which is undefined when features is 0).
int64_t rows(const at::Tensor& t) {
  int64_t r = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) r *= t.size(d);
  return r;
}

MatrixRef view_of(const at::Tensor& t2d) {
  return {t2d.const_data_ptr<float>(), t2d.stride(0), t2d.stride(1)};
}

// Checks input (..., in), weight (out, in), bias (out) and returns input as a 2-D view.
at::Tensor check_linear(const char* op, const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias) {
  bind::check_float32(op, "input", input);
  bind::check_float32(op, "weight", weight);
  bind::check_same_device(op, "input", input, "weight", weight);
  TORCH_CHECK_VALUE(weight.dim() == 2, "dlkern.", op, ": argument 'weight' must be 2-D (out_features, ",
                    "in_features), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(input.dim() >= 1, "dlkern.", op, ": argument 'input' must have at least 1 ",
                    "dimension (..., in_features), got a 0-d tensor");
  TORCH_CHECK_VALUE(input.size(-1) == weight.size(1), "dlkern.", op, ": input and weight shapes ",
                    "cannot be multiplied: input ", input.sizes(), " has ", input.size(-1),
                    " in_features, weight ", weight.sizes(), " expects ", weight.size(1));
  if (bias.has_value() && bias->defined()) {
    bind::check_float32(op, "bias", *bias);
    bind::check_same_device(op, "input", input, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "dlkern.", op,
                      ": argument 'bias' must have shape [", weight.size(0), "] (out_features of ",
                      "weight ", weight.sizes(), "), got ", bias->sizes());
  }
  return input.reshape({rows(input), input.size(-1)});
}

std::vector<int64_t> out_shape(const at::Tensor& input, int64_t out) {
  std::vector<int64_t> s(input.sizes().begin(), input.sizes().end());
  s.back() = out;
  return s;
}

// One body for both devices; only the core call differs.
at::Tensor linear_any(const at::Tensor& input, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias, bool cuda) {
  const at::Tensor x = check_linear("linear", input, weight, bias);
  const int64_t out = weight.size(0);
  at::Tensor y = at::empty({x.size(0), out}, input.options());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  const dlkern::DenseShape s{x.size(0), x.size(1), out};
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
#ifdef DLKERN_WITH_CUDA
  if (cuda) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor ws = bind::cuda_workspace(dlkern::dense_cuda_workspace(s), x);
    bind::check_status("linear", dlkern::dense_fwd_cuda(s, view_of(x), view_of(weight), bp,
                                                        y.mutable_data_ptr<float>(),
                                                        ws.mutable_data_ptr(), ws.numel(),
                                                        bind::cuda_stream()));
    return y.view(out_shape(input, out));
  }
#endif
  bind::check_status("linear", dlkern::dense_fwd_cpu(s, view_of(x), view_of(weight), bp,
                                                     y.mutable_data_ptr<float>(),
                                                     at::get_num_threads()));
  return y.view(out_shape(input, out));
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias) {
  return linear_any(input, weight, bias, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_any(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> mask, bool cuda) {
  const at::Tensor x = check_linear("linear_backward", input, weight, c10::nullopt);
  bind::check_float32("linear_backward", "grad_output", grad_output);
  bind::check_same_device("linear_backward", "grad_output", grad_output, "input", input);
  const int64_t out = weight.size(0);
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(out_shape(input, out)),
                    "dlkern.linear_backward: argument 'grad_output' must have shape ",
                    at::IntArrayRef(out_shape(input, out)), ", got ", grad_output.sizes());
  const at::Tensor g = grad_output.reshape({rows(grad_output), out}).contiguous();
  at::Tensor dx, dw, db;
  if (mask[0]) dx = at::empty(input.sizes(), input.options());
  if (mask[1]) dw = at::empty(weight.sizes(), weight.options());
  if (mask[2]) db = at::empty({out}, weight.options());
  const dlkern::DenseShape s{x.size(0), x.size(1), out};
  float* dxp = bind::out_ptr(dx);
  float* dwp = bind::out_ptr(dw);
  float* dbp = bind::out_ptr(db);
#ifdef DLKERN_WITH_CUDA
  if (cuda) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor ws = bind::cuda_workspace(dlkern::dense_cuda_workspace(s), x);
    bind::check_status("linear_backward",
                       dlkern::dense_bwd_cuda(s, view_of(x), view_of(weight),
                                              g.const_data_ptr<float>(), dxp, dwp, dbp,
                                              ws.mutable_data_ptr(), ws.numel(),
                                              bind::cuda_stream()));
    return {dx, dw, db};
  }
#endif
  bind::check_status("linear_backward",
                     dlkern::dense_bwd_cpu(s, view_of(x), view_of(weight), g.const_data_ptr<float>(),
                                           dxp, dwp, dbp, at::get_num_threads()));
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> mask) {
  return linear_backward_any(grad_output, input, weight, mask, false);
}

#ifdef DLKERN_WITH_CUDA
at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias) {
  return linear_any(input, weight, bias, true);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> mask) {
  return linear_backward_any(grad_output, input, weight, mask, true);
}
#else
// A build without CUDA: a CUDA tensor gets a clear error naming the rebuild command.
at::Tensor linear_no_cuda(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&) {
  bind::no_cuda_kernels("linear");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_no_cuda(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>) {
  bind::no_cuda_kernels("linear_backward");
}
#endif

// ---- autograd ---------------------------------------------------------------------------

using torch::autograd::variable_list;

at::Tensor call_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&)>();
  return op.call(x, w, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_linear_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::linear_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           std::array<bool, 3>)>();
  return op.call(g, x, w, mask);
}

// Saves input and weight; computes the gradients the graph asks for in one fused call. With
// create_graph=True the gradients are built from dlkern::linear itself (differentiable), so
// double backward goes through dlkern's kernels too.
struct LinearBackwardNode final : public torch::autograd::Node {
  torch::autograd::SavedVariable input_, weight_;

  std::string name() const override { return "DlkernLinearBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    const std::array<bool, 3> mask = {should_compute_output(0), should_compute_output(1),
                                      should_compute_output(2)};
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor x = input_.unpack(), w = weight_.unpack();
    if (!at::GradMode::is_enabled()) {
      auto [dx, dw, db] = call_linear_backward(g, x, w, mask);
      return {dx, dw, db};
    }
    const int64_t out = w.size(0), in = w.size(1);
    const at::Tensor g2 = g.reshape({rows(g), out}), x2 = x.reshape({rows(x), in});
    at::Tensor dx, dw, db;
    if (mask[0]) dx = call_linear(g, w.t(), c10::nullopt).view(x.sizes());
    if (mask[1]) dw = call_linear(g2.t(), x2.t(), c10::nullopt);
    if (mask[2]) db = g2.sum(0);
    return {dx, dw, db};
  }
};

at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& w,
                           const c10::optional<at::Tensor>& b) {
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = call_linear(x, w, b);
  }
  const at::Tensor bias = b.has_value() ? *b : at::Tensor();
  if (bind::needs_graph(x) || bind::needs_graph(w) || bind::needs_graph(bias)) {
    auto node = bind::make_node<LinearBackwardNode>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, w, bias));
    node->input_ = torch::autograd::SavedVariable(x, /*is_output=*/false);
    node->weight_ = torch::autograd::SavedVariable(w, /*is_output=*/false);
    torch::autograd::set_history(y, node);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(dlkern, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

TORCH_LIBRARY_IMPL(dlkern, CUDA, m) {
#ifdef DLKERN_WITH_CUDA
  m.impl("linear", &linear_cuda);
  m.impl("linear_backward", &linear_backward_cuda);
#else
  m.impl("linear", &linear_no_cuda);
  m.impl("linear_backward", &linear_backward_no_cuda);
#endif
}

TORCH_LIBRARY_IMPL(dlkern, Autograd, m) {
  m.impl("linear", &linear_autograd);
  m.impl("linear_backward", torch::autograd::autogradNotImplementedFallback());
}
