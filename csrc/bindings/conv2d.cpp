// dlkern::conv2d and dlkern::conv2d_backward: schemas, one device-generic kernel each
// (csrc/core/conv2d.h, CPU and CUDA) and a hand-written autograd node. Fake kernels, 'same' /
// 'valid' padding, unbatched inputs and padding modes are handled in dlkern/ops/conv2d.py; here
// padding is explicit: [top, bottom, left, right].
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>

#include <vector>

#include "../core/conv2d.h"
#include "binding.h"

namespace {

namespace bind = dlkern::bind;
using bind::Grads3;
using bind::OptTensor;

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

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                  int64_t groups) {
  const auto s = check_conv("conv2d", input, weight, stride, padding, dilation, groups);
  at::Tensor b;
  if (bind::has(bias)) {
    bind::check_float32("conv2d", "bias", *bias);
    bind::check_same_device("conv2d", "input", input, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == s.K, "dlkern.conv2d: argument 'bias' ",
                      "must have shape [", s.K, "] (out_channels of weight ", weight.sizes(),
                      "), got ", bias->sizes());
    b = bias->contiguous();
  }
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options());
  const float *xp = x.const_data_ptr<float>(), *wp = w.const_data_ptr<float>(),
              *bp = bind::in_ptr(b);
  float* yp = y.mutable_data_ptr<float>();
  bind::run(
      "conv2d", x, [&](int threads) { return dlkern::conv2d_fwd_cpu(s, xp, wp, bp, yp, threads); },
      [&](auto& c) {
        void* ws = c.scratch(dlkern::conv2d_cuda_workspace(s));
        return dlkern::conv2d_fwd_cuda(s, xp, wp, bp, yp, ws, c.scratch_bytes(), c.stream());
      });
  return y;
}

Grads3 conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> mask) {
  const char* op = "conv2d_backward";
  const auto s = check_conv(op, input, weight, stride, padding, dilation, groups);
  bind::check_grad_output(op, grad_output, input, {s.N, s.K, s.P, s.Q});
  const at::Tensor g = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  auto grads = bind::empty_grads(mask, input.sizes(), weight.sizes(), {s.K}, weight.options());
  float* dx = bind::out_ptr(std::get<0>(grads));
  float* dw = bind::out_ptr(std::get<1>(grads));
  float* db = bind::out_ptr(std::get<2>(grads));
  const float *xp = x.const_data_ptr<float>(), *wp = w.const_data_ptr<float>(),
              *gp = g.const_data_ptr<float>();
  bind::run(
      op, x,
      [&](int threads) { return dlkern::conv2d_bwd_cpu(s, xp, wp, gp, dx, dw, db, threads); },
      [&](auto& c) {
        void* ws = c.scratch(dlkern::conv2d_cuda_workspace(s));
        return dlkern::conv2d_bwd_cuda(s, xp, wp, gp, dx, dw, db, ws, c.scratch_bytes(),
                                       c.stream());
      });
  return grads;
}

// The algorithm kAuto picks for these arguments (dlkern.ops.conv2d.algorithm).
std::string conv2d_algorithm(const at::Tensor& input, const at::Tensor& weight,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups) {
  const auto s = check_conv("conv2d", input, weight, stride, padding, dilation, groups);
  return dlkern::conv2d_algo_name(dlkern::conv2d_pick_algo(s));
}

// How the CPU's kAuto chooses between winograd and im2col (dlkern.ops.conv2d.preference):
// "auto" (the measured rule), "winograd" (wherever it applies) or "gemm" (never winograd).
std::string conv2d_preference() {
  switch (dlkern::conv2d_preference()) {
    case dlkern::Conv2dAlgo::kWinograd: return "winograd";
    case dlkern::Conv2dAlgo::kIm2col: return "gemm";
    default: return "auto";
  }
}

void set_conv2d_preference(std::string name) {
  TORCH_CHECK_VALUE(name == "auto" || name == "winograd" || name == "gemm",
                    "dlkern.conv2d preference: argument 'name' must be 'auto', 'winograd' or ",
                    "'gemm', got '", name, "'");
  dlkern::conv2d_set_preference(name == "auto"       ? dlkern::Conv2dAlgo::kAuto
                                : name == "winograd" ? dlkern::Conv2dAlgo::kWinograd
                                                     : dlkern::Conv2dAlgo::kIm2col);
}

int64_t winograd_passes() { return dlkern::conv2d_winograd_passes(); }

// ---- autograd -------------------------------------------------------------------------------

// saved: input, weight
struct Conv2dBackwardNode final : public bind::SavingNode<2> {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;

  std::string name() const override { return "DlkernConv2dBackward"; }
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), "dlkern.conv2d: double backward ",
                                "(create_graph=True) is not implemented");
    auto [dx, dw, db] = bind::call<conv2d_backward>(
        "dlkern::conv2d_backward", g, saved[0].unpack(), saved[1].unpack(), stride, padding,
        dilation, groups, wanted<3>());
    return {dx, dw, db};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& x, const at::Tensor& w, const OptTensor& b,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = bind::call<conv2d>("dlkern::conv2d", x, w, b, stride, padding, dilation, groups);
  }
  bind::record_backward<Conv2dBackwardNode>(
      y,
      [&](Conv2dBackwardNode& n) {
        n.saved[0] = torch::autograd::SavedVariable(x, false);
        n.saved[1] = torch::autograd::SavedVariable(w, false);
        n.stride = stride.vec(), n.padding = padding.vec(), n.dilation = dilation.vec();
        n.groups = groups;
      },
      x, w, bind::or_undefined(b));
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dlkern, m) {
  // padding is [top, bottom, left, right]
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // the algorithm conv2d picks for these arguments (gemm1x1, im2col, depthwise or winograd)
  m.def("_conv2d_algorithm(Tensor input, Tensor weight, int[2] stride, int[4] padding, "
        "int[2] dilation, int groups) -> str");
  m.def("_conv2d_preference() -> str", &conv2d_preference);
  m.def("_set_conv2d_preference(str name) -> ()", &set_conv2d_preference);
  // passes served by Winograd so far (tests: a fallback to im2col would pass a comparison unseen)
  m.def("_conv2d_winograd_passes() -> int", &winograd_passes);
  bind::register_op(m, "conv2d", &conv2d, &conv2d_autograd);
  bind::register_op(m, "conv2d_backward", &conv2d_backward,
                    torch::autograd::autogradNotImplementedFallback());
  m.impl("_conv2d_algorithm", torch::dispatch(c10::DispatchKey::CPU, &conv2d_algorithm));
}
