// dlkern::batch_norm and dlkern::batch_norm_backward: CPU kernels (csrc/core/batchnorm.h) and a
// hand-written autograd node. The op returns (output, save_mean, save_invstd) and updates the
// running statistics in place (they are declared mutable in the schema). Fake kernels are in
// dlkern/ops/batchnorm.py.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

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
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "../core/batchnorm.h"
#include "autograd_node.h"
#include "checks.h"

namespace {

namespace bind = dlkern::bind;
using OptTensor = c10::optional<at::Tensor>;

bool has(const OptTensor& t) { return t.has_value() && t->defined(); }
// The core reads per-channel vectors as dense arrays: a strided, expanded or offset view (a slice
// of a flattened parameter buffer) is copied first. ptr() is only ever given dense() results.
OptTensor dense(const OptTensor& t) { return has(t) ? OptTensor(t->contiguous()) : t; }
const float* ptr(const OptTensor& t) { return has(t) ? t->const_data_ptr<float>() : nullptr; }

void check_channel_vector(const char* op, const char* arg, const OptTensor& t,
                          const at::Tensor& input) {
  if (!has(t)) return;
  bind::check_float32(op, arg, *t);
  bind::check_same_device(op, "input", input, arg, *t);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == input.size(1), "dlkern.", op, ": argument '",
                    arg, "' must have shape [", input.size(1), "] (the channels of input ",
                    input.sizes(), "), got ", t->sizes());
}

dlkern::BatchNormShape shape_of(const at::Tensor& x) {
  dlkern::BatchNormShape s;
  s.N = x.size(0);
  s.C = x.size(1);
  s.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s.S *= x.size(d);
  return s;
}

void check_input(const char* op, const at::Tensor& input) {
  bind::check_float32(op, "input", input);
  TORCH_CHECK_VALUE(input.dim() >= 2 && input.dim() <= 5, "dlkern.", op, ": argument 'input' must ",
                    "be (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W), got shape ",
                    input.sizes());
}

// One body for both devices: checks, layout and allocation are shared; only the core call
// differs (a thread count on CPU; a stream and a workspace on CUDA).
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_any(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var, bool training, double momentum,
    double eps, bool cuda) {
  const char* op = "batch_norm";
  check_input(op, input);
  check_channel_vector(op, "weight", weight, input);
  check_channel_vector(op, "bias", bias, input);
  const OptTensor w = dense(weight), b = dense(bias);
  check_channel_vector(op, "running_mean", running_mean, input);
  check_channel_vector(op, "running_var", running_var, input);
  TORCH_CHECK_VALUE(has(running_mean) == has(running_var), "dlkern.batch_norm: running_mean and ",
                    "running_var must be given together");
  TORCH_CHECK_VALUE(eps >= 0, "dlkern.batch_norm: argument 'eps' must be >= 0, got ", eps);
  const at::Tensor x = input.contiguous();  // channels_last and other layouts: converted
  const dlkern::BatchNormShape s = shape_of(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor save_mean = at::empty({s.C}, x.options()), save_invstd = at::empty({s.C}, x.options());
  if (training) {
    TORCH_CHECK_VALUE(s.N * s.S != 1, "dlkern.batch_norm: expected more than 1 value ",
                      "per channel when training, got input size ", input.sizes());
    // the core updates running stats in place; non-contiguous ones go through a copy
    for (const auto& [arg, t] : {std::pair{"running_mean", &running_mean},
                                 std::pair{"running_var", &running_var}}) {
      TORCH_CHECK_VALUE(!has(*t) || at::has_internal_overlap(**t) != at::MemOverlap::Yes,
                        "dlkern.batch_norm: argument '", arg, "' is updated in place in ",
                        "training, but its elements share memory (a stride-0 view such as ",
                        "expand()); give it memory of its own, e.g. .clone()");
    }
    at::Tensor rm, rv;
    if (has(running_mean)) {
      rm = running_mean->is_contiguous() ? *running_mean : running_mean->contiguous();
      rv = running_var->is_contiguous() ? *running_var : running_var->contiguous();
    }
    float* rmp = rm.defined() ? rm.mutable_data_ptr<float>() : nullptr;
    float* rvp = rv.defined() ? rv.mutable_data_ptr<float>() : nullptr;
#ifdef DLKERN_WITH_CUDA
    if (cuda) {
      const c10::cuda::CUDAGuard guard(x.device());
      const at::Tensor ws = bind::cuda_workspace(dlkern::batchnorm_cuda_workspace(s), x);
      bind::check_status(op, dlkern::batchnorm_fwd_train_cuda(
          s, x.const_data_ptr<float>(), ptr(w), ptr(b), eps, momentum, rmp, rvp,
          y.mutable_data_ptr<float>(), save_mean.mutable_data_ptr<float>(),
          save_invstd.mutable_data_ptr<float>(), ws.mutable_data_ptr(), ws.numel(),
          bind::cuda_stream()));
    } else
#endif
    bind::check_status(op, dlkern::batchnorm_fwd_train_cpu(
        s, x.const_data_ptr<float>(), ptr(w), ptr(b), eps, momentum, rmp, rvp,
        y.mutable_data_ptr<float>(), save_mean.mutable_data_ptr<float>(),
        save_invstd.mutable_data_ptr<float>(), at::get_num_threads()));
    if (rm.defined() && !rm.is_same(*running_mean)) running_mean->copy_(rm);
    if (rv.defined() && !rv.is_same(*running_var)) running_var->copy_(rv);
  } else {
    TORCH_CHECK_VALUE(has(running_mean), "dlkern.batch_norm: running_mean and running_var must ",
                      "be given in evaluation mode (training=False)");
    const at::Tensor rm = running_mean->contiguous(), rv = running_var->contiguous();
#ifdef DLKERN_WITH_CUDA
    if (cuda) {
      const c10::cuda::CUDAGuard guard(x.device());
      const at::Tensor ws = bind::cuda_workspace(dlkern::batchnorm_cuda_workspace(s), x);
      bind::check_status(op, dlkern::batchnorm_fwd_eval_cuda(
          s, x.const_data_ptr<float>(), ptr(w), ptr(b), rm.const_data_ptr<float>(),
          rv.const_data_ptr<float>(), eps, y.mutable_data_ptr<float>(),
          save_mean.mutable_data_ptr<float>(), save_invstd.mutable_data_ptr<float>(),
          ws.mutable_data_ptr(), ws.numel(), bind::cuda_stream()));
    } else
#endif
    bind::check_status(op, dlkern::batchnorm_fwd_eval_cpu(
        s, x.const_data_ptr<float>(), ptr(w), ptr(b), rm.const_data_ptr<float>(),
        rv.const_data_ptr<float>(), eps, y.mutable_data_ptr<float>(),
        save_mean.mutable_data_ptr<float>(), save_invstd.mutable_data_ptr<float>(),
        at::get_num_threads()));
  }
  return {y, save_mean, save_invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_cpu(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var, bool training, double momentum,
    double eps) {
  return batch_norm_any(input, weight, bias, running_mean, running_var, training, momentum, eps,
                        false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_any(
    const at::Tensor& grad_output, const at::Tensor& input, const OptTensor& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> mask, bool cuda) {
  const char* op = "batch_norm_backward";
  check_input(op, input);
  bind::check_float32(op, "grad_output", grad_output);
  bind::check_same_device(op, "grad_output", grad_output, "input", input);
  bind::check_same_shape(op, "grad_output", grad_output, "input", input);
  check_channel_vector(op, "weight", weight, input);
  check_channel_vector(op, "save_mean", save_mean, input);
  check_channel_vector(op, "save_invstd", save_invstd, input);
  const OptTensor w = dense(weight);
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous();
  const at::Tensor m = save_mean.contiguous(), is = save_invstd.contiguous();
  const dlkern::BatchNormShape s = shape_of(x);
  at::Tensor dx, dw, db;
  if (mask[0]) dx = at::empty(x.sizes(), x.options());
  if (mask[1]) dw = at::empty({s.C}, x.options());
  if (mask[2]) db = at::empty({s.C}, x.options());
  float* dxp = bind::out_ptr(dx);
  float* dwp = bind::out_ptr(dw);
  float* dbp = bind::out_ptr(db);
#ifdef DLKERN_WITH_CUDA
  if (cuda) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor ws = bind::cuda_workspace(dlkern::batchnorm_cuda_workspace(s), x);
    bind::check_status(op, dlkern::batchnorm_bwd_cuda(
        s, x.const_data_ptr<float>(), g.const_data_ptr<float>(), ptr(w),
        m.const_data_ptr<float>(), is.const_data_ptr<float>(), training, dxp, dwp, dbp,
        ws.mutable_data_ptr(), ws.numel(), bind::cuda_stream()));
    return {dx, dw, db};
  }
#endif
  bind::check_status(op, dlkern::batchnorm_bwd_cpu(
      s, x.const_data_ptr<float>(), g.const_data_ptr<float>(), ptr(w),
      m.const_data_ptr<float>(), is.const_data_ptr<float>(), training, dxp, dwp, dbp,
      at::get_num_threads()));
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const OptTensor& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> mask) {
  return batch_norm_backward_any(grad_output, input, weight, save_mean, save_invstd, training,
                                 mask, false);
}

#ifdef DLKERN_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_cuda(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var, bool training, double momentum,
    double eps) {
  return batch_norm_any(input, weight, bias, running_mean, running_var, training, momentum, eps,
                        true);
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const OptTensor& weight,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    std::array<bool, 3> mask) {
  return batch_norm_backward_any(grad_output, input, weight, save_mean, save_invstd, training,
                                 mask, true);
}
#else
// A build without CUDA: a CUDA tensor gets a clear error naming the rebuild command.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_no_cuda(
    const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    bool, double, double) {
  bind::no_cuda_kernels("batch_norm");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_no_cuda(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
    bool, std::array<bool, 3>) {
  bind::no_cuda_kernels("batch_norm_backward");
}
#endif

// ---- autograd ---------------------------------------------------------------------------

using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_batch_norm(
    const at::Tensor& x, const OptTensor& w, const OptTensor& b, const OptTensor& rm,
    const OptTensor& rv, bool training, double momentum, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::batch_norm", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                           const OptTensor&, bool, double, double)>();
  return op.call(x, w, b, rm, rv, training, momentum, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_batch_norm_backward(
    const at::Tensor& g, const at::Tensor& x, const OptTensor& w, const at::Tensor& m,
    const at::Tensor& is, bool training, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dlkern::batch_norm_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const at::Tensor&, const at::Tensor&, bool, std::array<bool, 3>)>();
  return op.call(g, x, w, m, is, training, mask);
}

struct BatchNormBackwardNode final : public torch::autograd::Node {
  torch::autograd::SavedVariable input_, weight_, mean_, invstd_;
  bool has_weight_ = false, training_ = true;

  std::string name() const override { return "DlkernBatchNormBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
    mean_.reset_data();
    invstd_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), "dlkern.batch_norm: double backward ",
                                "(create_graph=True) is not implemented");
    const std::array<bool, 3> mask = {should_compute_output(0), should_compute_output(1),
                                      should_compute_output(2)};
    const OptTensor w = has_weight_ ? OptTensor(weight_.unpack()) : OptTensor();
    auto [dx, dw, db] = call_batch_norm_backward(g, input_.unpack(), w, mean_.unpack(),
                                                 invstd_.unpack(), training_, mask);
    return {dx, dw, db};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_autograd(
    const at::Tensor& x, const OptTensor& w, const OptTensor& b, const OptTensor& rm,
    const OptTensor& rv, bool training, double momentum, double eps) {
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = call_batch_norm(x, w, b, rm, rv, training, momentum, eps);
  }
  // the running statistics were written below the ADInplaceOrView key: bump their versions
  if (training && has(rm)) {
    torch::autograd::increment_version(*rm);
    torch::autograd::increment_version(*rv);
  }
  const at::Tensor wt = has(w) ? *w : at::Tensor(), bt = has(b) ? *b : at::Tensor();
  if (bind::needs_graph(x) || bind::needs_graph(wt) || bind::needs_graph(bt)) {
    auto node = bind::make_node<BatchNormBackwardNode>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, wt, bt));
    node->input_ = torch::autograd::SavedVariable(x, false);
    node->has_weight_ = wt.defined();
    if (wt.defined()) node->weight_ = torch::autograd::SavedVariable(wt, false);
    node->mean_ = torch::autograd::SavedVariable(std::get<1>(out), false);
    node->invstd_ = torch::autograd::SavedVariable(std::get<2>(out), false);
    node->training_ = training;
    torch::autograd::set_history(std::get<0>(out), node);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dlkern, CPU, m) {
  m.impl("batch_norm", &batch_norm_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

TORCH_LIBRARY_IMPL(dlkern, CUDA, m) {
#ifdef DLKERN_WITH_CUDA
  m.impl("batch_norm", &batch_norm_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
#else
  m.impl("batch_norm", &batch_norm_no_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_no_cuda);
#endif
}

TORCH_LIBRARY_IMPL(dlkern, Autograd, m) {
  m.impl("batch_norm", &batch_norm_autograd);
  m.impl("batch_norm_backward", torch::autograd::autogradNotImplementedFallback());
}
