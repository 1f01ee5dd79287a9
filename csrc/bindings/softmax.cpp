// dlkern::softmax and dlkern::softmax_backward: schemas, one device-generic kernel each
// (csrc/core/softmax.h, CPU and CUDA) and autograd: a hand-written backward Node for softmax and
// a torch::autograd::Function for softmax_backward, so double backward works. Fake kernels are
// in dlkern/ops/softmax.py.
#include <ATen/TensorOperators.h>
#include <torch/csrc/autograd/custom_function.h>

#include "../core/softmax.h"
#include "binding.h"

namespace {

using dlkern::SoftmaxShape;
namespace bind = dlkern::bind;
using torch::autograd::variable_list;

// The [outer, dim, inner] view of a contiguous tensor around its (wrapped) dim.
SoftmaxShape shape_of(const at::Tensor& t, int64_t dim) {
  SoftmaxShape s;
  if (t.dim() == 0) return s;  // 0-d: one line of one element
  for (int64_t d = 0; d < dim; ++d) s.outer *= t.size(d);
  s.dim = t.size(dim);
  for (int64_t d = dim + 1; d < t.dim(); ++d) s.inner *= t.size(d);
  return s;
}

at::Tensor softmax(const at::Tensor& input, int64_t dim) {
  bind::check_float32("softmax", "input", input);
  const int64_t d = bind::wrap_dim("softmax", dim, input.dim());
  const at::Tensor x = input.contiguous();
  const SoftmaxShape s = shape_of(x, d);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  bind::run(
      "softmax", x, [&](int threads) { return dlkern::softmax_fwd_cpu(s, xp, yp, threads); },
      [&](auto& c) { return dlkern::softmax_fwd_cuda(s, xp, yp, c.stream()); });
  return y;
}

at::Tensor softmax_backward(const at::Tensor& grad_output, const at::Tensor& output, int64_t dim) {
  const char* op = "softmax_backward";
  bind::check_float32(op, "grad_output", grad_output);
  bind::check_float32(op, "output", output);
  bind::check_same_device(op, "grad_output", grad_output, "output", output);
  bind::check_same_shape(op, "grad_output", grad_output, "output", output);
  const int64_t d = bind::wrap_dim(op, dim, output.dim());
  const at::Tensor y = output.contiguous(), g = grad_output.contiguous();
  const SoftmaxShape s = shape_of(y, d);
  at::Tensor dx = at::empty(y.sizes(), y.options());
  const float *yp = y.const_data_ptr<float>(), *gp = g.const_data_ptr<float>();
  float* dxp = dx.mutable_data_ptr<float>();
  bind::run(
      op, y, [&](int threads) { return dlkern::softmax_bwd_cpu(s, yp, gp, dxp, threads); },
      [&](auto& c) { return dlkern::softmax_bwd_cuda(s, yp, gp, dxp, c.stream()); });
  return dx;
}

at::Tensor call_softmax_backward(const at::Tensor& g, const at::Tensor& y, int64_t dim) {
  return bind::call<softmax_backward>("dlkern::softmax_backward", g, y, dim);
}

// ---- autograd -------------------------------------------------------------------------------

// First-order backward node, written like torch's generated SoftmaxBackward0 (a Node holding the
// saved output and dim as members) rather than a torch::autograd::Function, whose per-call
// bookkeeping (a string-keyed saved_data map, CppNode wrapping) is a visible share of a small
// softmax's forward+backward. Its backward calls dlkern::softmax_backward through the
// dispatcher, so create_graph=True reaches that op's own autograd below.
struct SoftmaxBackwardNode final : public bind::SavingNode<1> {
  int64_t dim = 0;

  std::string name() const override { return "DlkernSoftmaxBackward"; }
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined() || !should_compute_output(0)) return {at::Tensor()};
    return {call_softmax_backward(g, saved[0].unpack(bind::node_ptr(this)), dim)};
  }
};

// dx = y * (g - s), s = sum_d(g * y). For an upstream gradient u of dx:
//   d/dg = y * (u - sum_d(u * y))                 = softmax_backward(u, y)
//   d/dy = u * (g - s) - g * sum_d(u * y)
class SoftmaxBackwardFunction : public torch::autograd::Function<SoftmaxBackwardFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                            const at::Tensor& y, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({g, y});
    ctx->saved_data["dim"] = dim;
    return call_softmax_backward(g, y, dim);
  }
  static variable_list backward(torch::autograd::AutogradContext* ctx, variable_list grads) {
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
    y = bind::call<softmax>("dlkern::softmax", x, dim);
  }
  bind::record_backward<SoftmaxBackwardNode>(
      y,
      [&](SoftmaxBackwardNode& n) {
        n.dim = dim;
        n.saved[0] = torch::autograd::SavedVariable(y, /*is_output=*/true);
      },
      x);
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

TORCH_LIBRARY_FRAGMENT(dlkern, m) {
  m.def("softmax(Tensor input, int dim) -> Tensor");
  m.def("softmax_backward(Tensor grad_output, Tensor output, int dim) -> Tensor");
  bind::register_op(m, "softmax", &softmax, &softmax_autograd);
  bind::register_op(m, "softmax_backward", &softmax_backward, &softmax_backward_autograd);
}
