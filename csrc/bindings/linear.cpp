// dlkern::linear and dlkern::linear_backward: schemas, one device-generic kernel each (the GEMM
// core, csrc/core/linear.h, on CPU and CUDA) and a hand-written autograd node. Fake kernels are
// in dlkern/ops/linear.py.
//
// Inputs are not made contiguous: the core takes strided 2-D views, so a transposed or sliced
// weight is packed by the GEMM rather than copied here.
#include <vector>

#include <ATen/TensorOperators.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>

#include "../core/linear.h"
#include "binding.h"

namespace {

namespace bind = dlkern::bind;
using bind::Grads3;
using bind::OptTensor;
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
                        const OptTensor& bias) {
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
  if (bind::has(bias)) {
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

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias) {
  const at::Tensor x = check_linear("linear", input, weight, bias);
  const int64_t out = weight.size(0);
  at::Tensor y = at::empty({x.size(0), out}, input.options());
  const at::Tensor b = bind::has(bias) ? bias->contiguous() : at::Tensor();
  const dlkern::LinearShape s{x.size(0), x.size(1), out};
  const float* bp = bind::in_ptr(b);
  float* yp = y.mutable_data_ptr<float>();
  bind::run(
      "linear", x,
      [&](int threads) {
        return dlkern::linear_fwd_cpu(s, view_of(x), view_of(weight), bp, yp, threads);
      },
      [&](auto& c) {
        void* ws = c.scratch(dlkern::linear_cuda_workspace(s));
        return dlkern::linear_fwd_cuda(s, view_of(x), view_of(weight), bp, yp, ws,
                                       c.scratch_bytes(), c.stream());
      });
  return y.view(out_shape(input, out));
}

Grads3 linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& weight, std::array<bool, 3> mask) {
  const char* op = "linear_backward";
  const at::Tensor x = check_linear(op, input, weight, c10::nullopt);
  const int64_t out = weight.size(0);
  bind::check_grad_output(op, grad_output, input, out_shape(input, out));
  const at::Tensor g = grad_output.reshape({rows(grad_output), out}).contiguous();
  auto grads = bind::empty_grads(mask, input.sizes(), weight.sizes(), {out}, weight.options());
  float* dx = bind::out_ptr(std::get<0>(grads));
  float* dw = bind::out_ptr(std::get<1>(grads));
  float* db = bind::out_ptr(std::get<2>(grads));
  const dlkern::LinearShape s{x.size(0), x.size(1), out};
  const float* gp = g.const_data_ptr<float>();
  bind::run(
      op, x,
      [&](int threads) {
        return dlkern::linear_bwd_cpu(s, view_of(x), view_of(weight), gp, dx, dw, db, threads);
      },
      [&](auto& c) {
        void* ws = c.scratch(dlkern::linear_cuda_workspace(s));
        return dlkern::linear_bwd_cuda(s, view_of(x), view_of(weight), gp, dx, dw, db, ws,
                                       c.scratch_bytes(), c.stream());
      });
  return grads;
}

// ---- autograd -------------------------------------------------------------------------------

// Saves input and weight; computes the gradients the graph asks for in one fused call. With
// create_graph=True the gradients are built from dlkern::linear itself (differentiable), so
// double backward goes through dlkern's kernels too.
struct LinearBackwardNode final : public bind::SavingNode<2> {
  std::string name() const override { return "DlkernLinearBackward"; }
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    const auto mask = wanted<3>();
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::Tensor x = saved[0].unpack(), w = saved[1].unpack();
    if (!at::GradMode::is_enabled()) {
      auto [dx, dw, db] = bind::call<linear_backward>("dlkern::linear_backward", g, x, w, mask);
      return {dx, dw, db};
    }
    const int64_t out = w.size(0), in = w.size(1);
    const at::Tensor g2 = g.reshape({rows(g), out}), x2 = x.reshape({rows(x), in});
    at::Tensor dx, dw, db;
    if (mask[0]) dx = bind::call<linear>("dlkern::linear", g, w.t(), c10::nullopt).view(x.sizes());
    if (mask[1]) dw = bind::call<linear>("dlkern::linear", g2.t(), x2.t(), c10::nullopt);
    if (mask[2]) db = g2.sum(0);
    return {dx, dw, db};
  }
};

at::Tensor linear_autograd(const at::Tensor& x, const at::Tensor& w, const OptTensor& b) {
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = bind::call<linear>("dlkern::linear", x, w, b);
  }
  bind::record_backward<LinearBackwardNode>(
      y,
      [&](LinearBackwardNode& n) {
        n.saved[0] = torch::autograd::SavedVariable(x, /*is_output=*/false);
        n.saved[1] = torch::autograd::SavedVariable(w, /*is_output=*/false);
      },
      x, w, bind::or_undefined(b));
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dlkern, m) {
  m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  bind::register_op(m, "linear", &linear, &linear_autograd);
  bind::register_op(m, "linear_backward", &linear_backward,
                    torch::autograd::autogradNotImplementedFallback());
}
