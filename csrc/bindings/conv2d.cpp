// dlkern::conv2d and dlkern::conv2d_backward: CPU kernels (csrc/core/conv2d.h) and a hand-written
// autograd node. Fake kernels, 'same'/'valid' padding, unbatched inputs and padding modes are
// handled in dlkern/ops/conv2d.py; here padding is explicit: [top, bottom, left, right].
#include <ATen/Parallel.h>

#include <array>
#include <mutex>
#include <tuple>
#include <vector>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include "../core/conv2d.h"
#include "autograd_node.h"
#include "checks.h"

namespace {

namespace bind = dlkern::bind;
using OptTensor = c10::optional<at::Tensor>;

bool has(const OptTensor& t) { return t.has_value() && t->defined(); }

// Checks every argument and returns the core's shape description.
dlkern::Conv2dShape check_conv(const char* op, const at::Tensor& input, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  bind::check_float32(op, "input", input);
  bind::check_float32(op, "weight", weight);
  bind::check_same_device(op, "input", input, "weight", weight);
  TORCH_CHECK_VALUE(input.dim() == 4, "dlkern.", op, ": argument 'input' must be 4-D (N, C, H, W), ",
                    "got shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4, "dlkern.", op, ": argument 'weight' must be 4-D (out_channels, ",
                    "in_channels / groups, kH, kW), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, "dlkern.", op,
                    ": argument 'stride' must be 2 positive values, got ", stride);
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1, "dlkern.", op,
                    ": argument 'dilation' must be 2 positive values, got ", dilation);
  TORCH_CHECK_VALUE(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 &&
                    padding[3] >= 0, "dlkern.", op, ": argument 'padding' must be 4 non-negative ",
                    "values (top, bottom, left, right), got ", padding);
  TORCH_CHECK_VALUE(groups >= 1, "dlkern.", op, ": argument 'groups' must be positive, got ", groups);
  const int64_t C = input.size(1), K = weight.size(0);
  // as torch: a convolution without output channels is refused, not an empty result
  TORCH_CHECK_VALUE(K >= 1, "dlkern.", op, ": argument 'weight' must have at least one output ",
                    "channel (dim 0), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(C % groups == 0, "dlkern.", op, ": groups=", groups, " must divide the input's ",
                    C, " channels (input shape ", input.sizes(), ")");
  TORCH_CHECK_VALUE(K % groups == 0, "dlkern.", op, ": groups=", groups, " must divide the weight's ",
                    K, " output channels (weight shape ", weight.sizes(), ")");
  TORCH_CHECK_VALUE(weight.size(1) * groups == C, "dlkern.", op, ": input has ", C, " channels but ",
                    "weight ", weight.sizes(), " with groups=", groups, " expects ",
                    weight.size(1) * groups, " (weight.shape[1] * groups)");
  TORCH_CHECK_VALUE(weight.size(2) >= 1 && weight.size(3) >= 1, "dlkern.", op, ": argument 'weight' ",
                    "must have a kernel of at least 1x1, got shape ", weight.sizes());
  dlkern::Conv2dShape s;
  s.N = input.size(0), s.C = C, s.H = input.size(2), s.W = input.size(3);
  s.K = K, s.R = weight.size(2), s.S = weight.size(3), s.groups = groups;
  s.stride_h = stride[0], s.stride_w = stride[1];
  s.pad_h = padding[0], s.pad_w = padding[2];
  s.dil_h = dilation[0], s.dil_w = dilation[1];
  const int64_t eh = s.H + padding[0] + padding[1], ew = s.W + padding[2] + padding[3];
  const int64_t kh = s.dil_h * (s.R - 1) + 1, kw = s.dil_w * (s.S - 1) + 1;
  TORCH_CHECK_VALUE(eh >= kh && ew >= kw, "dlkern.", op, ": the padded input (", eh, " x ", ew,
                    ") is smaller than the dilated kernel (", kh, " x ", kw, "); input ",
                    input.sizes(), ", weight ", weight.sizes(), ", padding ", padding,
                    ", dilation ", dilation);
  s.P = (eh - kh) / s.stride_h + 1;
  s.Q = (ew - kw) / s.stride_w + 1;
  return s;
}

// One body for both devices; only the core call differs.
at::Tensor conv2d_any(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, bool cuda) {
  const auto s = check_conv("conv2d", input, weight, stride, padding, dilation, groups);
  at::Tensor b;
  if (has(bias)) {
    bind::check_float32("conv2d", "bias", *bias);
    bind::check_same_device("conv2d", "input", input, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == s.K, "dlkern.conv2d: argument 'bias' ",
                      "must have shape [", s.K, "] (out_channels of weight ", weight.sizes(),
                      "), got ", bias->sizes());
    b = bias->contiguous();
  }
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options());
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
#ifdef DLKERN_WITH_CUDA
  if (cuda) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor ws = bind::cuda_workspace(dlkern::conv2d_cuda_workspace(s), x);
    bind::check_status("conv2d", dlkern::conv2d_fwd_cuda(s, x.const_data_ptr<float>(),
                                                         w.const_data_ptr<float>(), bp,
                                                         y.mutable_data_ptr<float>(),
                                                         ws.mutable_data_ptr(), ws.numel(),
                                                         bind::cuda_stream()));
    return y;
  }
#endif
  bind::check_status("conv2d", dlkern::conv2d_fwd_cpu(s, x.const_data_ptr<float>(),
                                                      w.const_data_ptr<float>(), bp,
                                                      y.mutable_data_ptr<float>(),
                                                      at::get_num_threads()));
  return y;
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups) {
  return conv2d_any(input, weight, bias, stride, padding, dilation, groups, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_any(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask, bool cuda) {
  const auto s = check_conv("conv2d_backward", input, weight, stride, padding, dilation, groups);
  bind::check_float32("conv2d_backward", "grad_output", grad_output);
  bind::check_same_device("conv2d_backward", "grad_output", grad_output, "input", input);
  const std::vector<int64_t> ys = {s.N, s.K, s.P, s.Q};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(ys), "dlkern.conv2d_backward: argument ",
                    "'grad_output' must have shape ", at::IntArrayRef(ys), ", got ",
                    grad_output.sizes());
  const at::Tensor g = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  at::Tensor dx, dw, db;
  if (mask[0]) dx = at::empty(input.sizes(), input.options());
  if (mask[1]) dw = at::empty(weight.sizes(), weight.options());
  if (mask[2]) db = at::empty({s.K}, weight.options());
  float* dxp = bind::out_ptr(dx);
  float* dwp = bind::out_ptr(dw);
  float* dbp = bind::out_ptr(db);
#ifdef DLKERN_WITH_CUDA
  if (cuda) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor ws = bind::cuda_workspace(dlkern::conv2d_cuda_workspace(s), x);
    bind::check_status("conv2d_backward",
                       dlkern::conv2d_bwd_cuda(s, x.const_data_ptr<float>(),
                                               w.const_data_ptr<float>(), g.const_data_ptr<float>(),
                                               dxp, dwp, dbp, ws.mutable_data_ptr(), ws.numel(),
                                               bind::cuda_stream()));
    return {dx, dw, db};
  }
#endif
  bind::check_status("conv2d_backward",
                     dlkern::conv2d_bwd_cpu(s, x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                                            g.const_data_ptr<float>(), dxp, dwp, dbp,
                                            at::get_num_threads()));
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  return conv2d_backward_any(grad_output, input, weight, stride, padding, dilation, groups, mask,
                             false);
}

#ifdef DLKERN_WITH_CUDA
at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups) {
  return conv2d_any(input, weight, bias, stride, padding, dilation, groups, true);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  return conv2d_backward_any(grad_output, input, weight, stride, padding, dilation, groups, mask,
                             true);
}
#endif

// The algorithm kAuto picks for these arguments (dlkern.ops.conv2d.algorithm).
std::string conv2d_algorithm(const at::Tensor& input, const at::Tensor& weight,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups) {
  const auto s = check_conv("conv2d", input, weight, stride, padding, dilation, groups);
  return dlkern::conv2d_algo_name(dlkern::conv2d_pick_algo(s));
}

#ifndef DLKERN_WITH_CUDA
// A build without CUDA: a CUDA tensor gets a clear error naming the rebuild command.
at::Tensor conv2d_no_cuda(const at::Tensor&, const at::Tensor&, const OptTensor&, at::IntArrayRef,
                          at::IntArrayRef, at::IntArrayRef, int64_t) {
  bind::no_cuda_kernels("conv2d");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_no_cuda(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
    at::IntArrayRef, int64_t, std::array<bool, 3>) {
  bind::no_cuda_kernels("conv2d_backward");
}
#endif

// ---- autograd ---------------------------------------------------------------------------

using torch::autograd::variable_list;

at::Tensor call_conv2d(const at::Tensor& x, const at::Tensor& w, const OptTensor& b,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                         int64_t)>();
  return op.call(x, w, b, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_conv2d_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                           std::array<bool, 3>)>();
  return op.call(g, x, w, stride, padding, dilation, groups, mask);
}

struct Conv2dBackwardNode final : public torch::autograd::Node {
  torch::autograd::SavedVariable input_, weight_;
  std::vector<int64_t> stride_, padding_, dilation_;
  int64_t groups_ = 1;

  std::string name() const override { return "DlkernConv2dBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), "dlkern.conv2d: double backward ",
                                "(create_graph=True) is not implemented");
    const std::array<bool, 3> mask = {should_compute_output(0), should_compute_output(1),
                                      should_compute_output(2)};
    auto [dx, dw, db] = call_conv2d_backward(g, input_.unpack(), weight_.unpack(), stride_,
                                             padding_, dilation_, groups_, mask);
    return {dx, dw, db};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& x, const at::Tensor& w, const OptTensor& b,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = call_conv2d(x, w, b, stride, padding, dilation, groups);
  }
  const at::Tensor bt = has(b) ? *b : at::Tensor();
  if (bind::needs_graph(x) || bind::needs_graph(w) || bind::needs_graph(bt)) {
    auto node = bind::make_node<Conv2dBackwardNode>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, w, bt));
    node->input_ = torch::autograd::SavedVariable(x, false);
    node->weight_ = torch::autograd::SavedVariable(w, false);
    node->stride_ = stride.vec();
    node->padding_ = padding.vec();
    node->dilation_ = dilation.vec();
    node->groups_ = groups;
    torch::autograd::set_history(y, node);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(dlkern, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
  m.impl("_conv2d_algorithm", &conv2d_algorithm);
}

TORCH_LIBRARY_IMPL(dlkern, CUDA, m) {
#ifdef DLKERN_WITH_CUDA
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
#else
  m.impl("conv2d", &conv2d_no_cuda);
  m.impl("conv2d_backward", &conv2d_backward_no_cuda);
#endif
}

TORCH_LIBRARY_IMPL(dlkern, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", torch::autograd::autogradNotImplementedFallback());
}
