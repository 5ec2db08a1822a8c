#pragma once
// Causal dilated/strided conv1d shared definitions (CPU and CUDA host code).
//
// One geometry serves both ops. The convolution reads a virtual input stream per (batch, channel):
//   [ prefix (length `pre`) | x (length T) ]
// where the prefix is either zeros (full-sequence op: pre = left pad, may be negative = crop) or the
// caller's state tensor (streaming update: pre = state length S). Output t of batch b, channel co:
//   y[b,co,t] = bias[co] + sum_{ci,j} w[co,ci,j] * a(stream[b,ci, t*stride + j*dilation])
//   then optional ReLU, then + residual[b,co,t]
// with a = ReLU when pre_relu, else identity. Tout = floor((pre + T - (K-1)*dilation - 1)/stride) + 1.
//
// Streaming state (like causal-conv1d's conv_state): S = (K-1)*dilation + 1 - stride inputs, already
// passed through the pre-activation (what the convolution sees; ReLU is idempotent so a state holding
// raw inputs gives the same outputs). The update consumes n inputs with n a multiple of stride and
// emits n/stride outputs; new_state = the last S entries of [state | x]. Zero state == causal padding,
// so feeding a sequence in chunks of multiples of stride equals one full pass.
#include <cstdint>
#include <stdexcept>
#include <string>

namespace motionstreamer {

struct CausalConvArgs {
  // data pointers (0 = absent for bias, residual, state, new_state)
  std::uintptr_t x, weight, bias, residual, y, state, new_state;
  std::int64_t B, Cin, T, Cout, K, stride, dilation, pre, Tout;
  bool pre_relu, post_relu;
};

inline std::int64_t causal_conv_out_len(std::int64_t pre, std::int64_t T, std::int64_t K, std::int64_t stride,
                                        std::int64_t dilation) {
  std::int64_t span = pre + T - (K - 1) * dilation - 1;
  return span < 0 ? 0 : span / stride + 1;
}

inline void causal_conv_check(const CausalConvArgs& a, const char* op) {
  auto fail = [&](const std::string& what) { throw std::invalid_argument(std::string(op) + ": " + what); };
  if (a.B < 0 || a.Cin < 1 || a.T < 0 || a.Cout < 1 || a.K < 1)
    fail("bad shape B=" + std::to_string(a.B) + " Cin=" + std::to_string(a.Cin) + " T=" + std::to_string(a.T) +
         " Cout=" + std::to_string(a.Cout) + " K=" + std::to_string(a.K));
  if (a.stride < 1 || a.dilation < 1)
    fail("stride and dilation must be >= 1, got " + std::to_string(a.stride) + ", " + std::to_string(a.dilation));
  if (!a.x && a.B * a.Cin * a.T > 0) fail("x pointer is null");
  if (!a.weight || (!a.y && a.B * a.Cout * a.Tout > 0)) fail("weight/y pointer is null");
  std::int64_t tout = causal_conv_out_len(a.pre, a.T, a.K, a.stride, a.dilation);
  if (a.Tout != tout)
    fail("Tout=" + std::to_string(a.Tout) + " but the geometry gives " + std::to_string(tout));
  if (a.state || a.new_state) {
    std::int64_t S = (a.K - 1) * a.dilation + 1 - a.stride;
    if (S < 0) fail("streaming needs (K-1)*dilation + 1 - stride >= 0, got " + std::to_string(S));
    if (a.pre != S) fail("state length " + std::to_string(a.pre) + " != (K-1)*dilation + 1 - stride = " +
                         std::to_string(S));
    if (a.T % a.stride) fail("streaming input length " + std::to_string(a.T) + " is not a multiple of stride " +
                             std::to_string(a.stride));
    if (a.pre > 0 && !a.state) fail("state pointer is null");
  }
}

}  // namespace motionstreamer
