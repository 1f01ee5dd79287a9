// Helpers for hand-written autograd nodes (see softmax.cpp and linear.cpp for why nodes are
// written in C++ rather than registered from Python).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function.h>

namespace dlkern {
namespace bind {

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

}  // namespace bind
}  // namespace dlkern
