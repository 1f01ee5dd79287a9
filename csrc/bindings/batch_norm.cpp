// dlkern::batch_norm and dlkern::batch_norm_backward: schemas, one device-generic kernel each
// (csrc/core/batch_norm.h, CPU and CUDA) and a hand-written autograd node. The op returns
// (output, save_mean, save_invstd) and updates the running statistics in place (they are declared
// mutable in the schema). Fake kernels are in dlkern/ops/batch_norm.py.
#include <ATen/MemoryOverlap.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>

#include "../core/batch_norm.h"
#include "binding.h"

namespace {

namespace bind = dlkern::bind;
using bind::Grads3;
using bind::has;
using bind::OptTensor;

// The core reads per-channel vectors as dense arrays: a strided, expanded or offset view (a slice
// of a flattened parameter buffer) is copied first.
at::Tensor dense(const OptTensor& t) { return has(t) ? t->contiguous() : at::Tensor(); }

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

// The running statistics the core updates in place, as dense tensors: the caller's own, or
// copies to write back (write_back()) when they are strided views.
struct RunningStats {
  at::Tensor mean, var;
  float* mean_ptr() { return bind::out_ptr(mean); }
  float* var_ptr() { return bind::out_ptr(var); }
};

RunningStats running_stats_for_update(const OptTensor& running_mean, const OptTensor& running_var) {
  for (const auto& [arg, t] : {std::pair{"running_mean", &running_mean},
                               std::pair{"running_var", &running_var}}) {
    TORCH_CHECK_VALUE(!has(*t) || at::has_internal_overlap(**t) != at::MemOverlap::Yes,
                      "dlkern.batch_norm: argument '", arg, "' is updated in place in ",
                      "training, but its elements share memory (a stride-0 view such as ",
                      "expand()); give it memory of its own, e.g. .clone()");
  }
  return {dense(running_mean), dense(running_var)};
}

void write_back(const RunningStats& r, const OptTensor& running_mean, const OptTensor& running_var) {
  if (r.mean.defined() && !r.mean.is_same(*running_mean)) running_mean->copy_(r.mean);
  if (r.var.defined() && !r.var.is_same(*running_var)) running_var->copy_(r.var);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var, bool training, double momentum,
    double eps) {
  const char* op = "batch_norm";
  check_input(op, input);
  for (const auto& [arg, t] : {std::pair{"weight", &weight}, std::pair{"bias", &bias},
                               std::pair{"running_mean", &running_mean},
                               std::pair{"running_var", &running_var}})
    check_channel_vector(op, arg, *t, input);
  TORCH_CHECK_VALUE(has(running_mean) == has(running_var), "dlkern.batch_norm: running_mean and ",
                    "running_var must be given together");
  TORCH_CHECK_VALUE(eps >= 0, "dlkern.batch_norm: argument 'eps' must be >= 0, got ", eps);
  const at::Tensor x = input.contiguous();  // channels_last and other layouts: converted
  const dlkern::BatchNormShape s = shape_of(x);
  const at::Tensor w = dense(weight), b = dense(bias);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor save_mean = at::empty({s.C}, x.options()), save_invstd = at::empty({s.C}, x.options());
  const float *xp = x.const_data_ptr<float>(), *wp = bind::in_ptr(w), *bp = bind::in_ptr(b);
  float *yp = y.mutable_data_ptr<float>(), *smp = save_mean.mutable_data_ptr<float>(),
        *sip = save_invstd.mutable_data_ptr<float>();
  if (training) {
    TORCH_CHECK_VALUE(s.N * s.S != 1, "dlkern.batch_norm: expected more than 1 value ",
                      "per channel when training, got input size ", input.sizes());
    RunningStats r = running_stats_for_update(running_mean, running_var);
    float *rmp = r.mean_ptr(), *rvp = r.var_ptr();
    bind::run(
        op, x,
        [&](int threads) {
          return dlkern::batch_norm_fwd_train_cpu(s, xp, wp, bp, eps, momentum, rmp, rvp, yp, smp,
                                                  sip, threads);
        },
        [&](auto& c) {
          void* ws = c.scratch(dlkern::batch_norm_cuda_workspace(s));
          return dlkern::batch_norm_fwd_train_cuda(s, xp, wp, bp, eps, momentum, rmp, rvp, yp, smp,
                                                   sip, ws, c.scratch_bytes(), c.stream());
        });
    write_back(r, running_mean, running_var);
  } else {
    TORCH_CHECK_VALUE(has(running_mean), "dlkern.batch_norm: running_mean and running_var must ",
                      "be given in evaluation mode (training=False)");
    const at::Tensor rm = dense(running_mean), rv = dense(running_var);
    const float *rmp = rm.const_data_ptr<float>(), *rvp = rv.const_data_ptr<float>();
    bind::run(
        op, x,
        [&](int threads) {
          return dlkern::batch_norm_fwd_eval_cpu(s, xp, wp, bp, rmp, rvp, eps, yp, smp, sip,
                                                 threads);
        },
        [&](auto& c) {
          void* ws = c.scratch(dlkern::batch_norm_cuda_workspace(s));
          return dlkern::batch_norm_fwd_eval_cuda(s, xp, wp, bp, rmp, rvp, eps, yp, smp, sip, ws,
                                                  c.scratch_bytes(), c.stream());
        });
  }
  return {y, save_mean, save_invstd};
}

Grads3 batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                           const OptTensor& weight, const at::Tensor& save_mean,
                           const at::Tensor& save_invstd, bool training, std::array<bool, 3> mask) {
  const char* op = "batch_norm_backward";
  check_input(op, input);
  bind::check_float32(op, "grad_output", grad_output);
  bind::check_same_device(op, "grad_output", grad_output, "input", input);
  bind::check_same_shape(op, "grad_output", grad_output, "input", input);
  check_channel_vector(op, "weight", weight, input);
  check_channel_vector(op, "save_mean", save_mean, input);
  check_channel_vector(op, "save_invstd", save_invstd, input);
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous(), w = dense(weight);
  const at::Tensor m = save_mean.contiguous(), is = save_invstd.contiguous();
  const dlkern::BatchNormShape s = shape_of(x);
  auto grads = bind::empty_grads(mask, x.sizes(), {s.C}, {s.C}, x.options());
  float* dx = bind::out_ptr(std::get<0>(grads));
  float* dw = bind::out_ptr(std::get<1>(grads));
  float* db = bind::out_ptr(std::get<2>(grads));
  const float *xp = x.const_data_ptr<float>(), *gp = g.const_data_ptr<float>(),
              *wp = bind::in_ptr(w), *mp = m.const_data_ptr<float>(),
              *isp = is.const_data_ptr<float>();
  bind::run(
      op, x,
      [&](int threads) {
        return dlkern::batch_norm_bwd_cpu(s, xp, gp, wp, mp, isp, training, dx, dw, db, threads);
      },
      [&](auto& c) {
        void* ws = c.scratch(dlkern::batch_norm_cuda_workspace(s));
        return dlkern::batch_norm_bwd_cuda(s, xp, gp, wp, mp, isp, training, dx, dw, db, ws,
                                           c.scratch_bytes(), c.stream());
      });
  return grads;
}

// ---- autograd -------------------------------------------------------------------------------

// saved: input, weight (undefined without one), save_mean, save_invstd
struct BatchNormBackwardNode final : public bind::SavingNode<4> {
  bool has_weight = false, training = true;

  std::string name() const override { return "DlkernBatchNormBackward"; }
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), "dlkern.batch_norm: double backward ",
                                "(create_graph=True) is not implemented");
    const OptTensor w = has_weight ? OptTensor(saved[1].unpack()) : OptTensor();
    auto [dx, dw, db] = bind::call<batch_norm_backward>(
        "dlkern::batch_norm_backward", g, saved[0].unpack(), w, saved[2].unpack(),
        saved[3].unpack(), training, wanted<3>());
    return {dx, dw, db};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_autograd(
    const at::Tensor& x, const OptTensor& w, const OptTensor& b, const OptTensor& rm,
    const OptTensor& rv, bool training, double momentum, double eps) {
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = bind::call<batch_norm>("dlkern::batch_norm", x, w, b, rm, rv, training, momentum, eps);
  }
  // the running statistics were written below the ADInplaceOrView key: bump their versions
  if (training && has(rm)) {
    torch::autograd::increment_version(*rm);
    torch::autograd::increment_version(*rv);
  }
  const at::Tensor wt = bind::or_undefined(w);
  bind::record_backward<BatchNormBackwardNode>(
      std::get<0>(out),
      [&](BatchNormBackwardNode& n) {
        n.saved[0] = torch::autograd::SavedVariable(x, false);
        n.has_weight = wt.defined();
        if (wt.defined()) n.saved[1] = torch::autograd::SavedVariable(wt, false);
        n.saved[2] = torch::autograd::SavedVariable(std::get<1>(out), false);
        n.saved[3] = torch::autograd::SavedVariable(std::get<2>(out), false);
        n.training = training;
      },
      x, wt, bind::or_undefined(b));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dlkern, m) {
  // returns (output, save_mean, save_invstd) and updates the running statistics in place when
  // training
  m.def("batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool training, float momentum, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  bind::register_op(m, "batch_norm", &batch_norm, &batch_norm_autograd);
  bind::register_op(m, "batch_norm_backward", &batch_norm_backward,
                    torch::autograd::autogradNotImplementedFallback());
}
