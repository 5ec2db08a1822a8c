// CPU fp32 causal conv1d (full sequence and streaming update), see csrc/causal_conv.h for the maths.
//
// Implicit GEMM in "dot" form: the weight (Cout, Cin, K) is already a row-major (Cout, R) matrix with
// R = Cin*K, so each output column (one (b, t) pair) is built once as a contiguous im2col row of length R
// and every output is a dot product along R. This keeps the weight reads contiguous for any Tout (the
// streaming step has Tout = 1..4, where the op is a GEMV bound by the weight reads). A register block of
// MR weight rows x NR columns of vector accumulators (AVX-512 6x4 x16 floats, AVX2 4x3 x8, generic 4x2 x8,
// picked at run time) gives the FMA units enough work per load; the reduction runs in 1024-value chunks so
// the block's weight rows stay in L1 while up to 64 im2col columns stream from L2. OpenMP (optional) splits
// the output channels. Needs GCC or Clang (vector extensions).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <pybind11/pybind11.h>

#include "causal_conv.h"
#include "ops.h"

namespace motionstreamer {
namespace {

using i64 = std::int64_t;

// Vectors of 8 / 16 floats (GCC/Clang vector extensions; the compiler maps them to
// SSE/AVX2/AVX-512 according to the target of the function they are inlined into).
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
#define MS_INLINE inline __attribute__((always_inline))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments only cross always-inlined calls
#endif

template <class V>
MS_INLINE V loadu(const float* p) {  // unaligned vector load
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// x86-64 Linux with GCC: the hot loop is also built for AVX2+FMA and AVX-512 and chosen at run time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MS_X86_DISPATCH 1
#endif

struct Src {
  const float *x, *state;
  i64 Cin, T, pre;
  bool relu, has_state;
  // Value the convolution sees at position p of [prefix | x] for (b, ci).
  inline float at(i64 b, i64 ci, i64 p) const {
    float v;
    if (p < pre)
      v = has_state ? state[(b * Cin + ci) * pre + p] : 0.f;
    else
      v = x[(b * Cin + ci) * T + (p - pre)];
    return relu && v < 0.f ? 0.f : v;
  }
};

// out[i*NR + j] += dot(w row i, x row j) over n values, for MR weight rows and NR im2col rows (row stride R).
template <class V, int MR, int NR>
MS_INLINE void dot_block(const float* w, const float* x, i64 R, i64 n, float* out) {
  constexpr int L = sizeof(V) / sizeof(float);
  V acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = V{} ;
  i64 r = 0;
  for (; r + L <= n; r += L) {
    V xv[NR];
    for (int j = 0; j < NR; ++j) xv[j] = loadu<V>(x + j * R + r);
    for (int i = 0; i < MR; ++i) {
      const V wv = loadu<V>(w + i * R + r);
      for (int j = 0; j < NR; ++j) acc[i][j] += wv * xv[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float s = 0.f;
      for (int l = 0; l < L; ++l) s += acc[i][j][l];
      for (i64 rr = r; rr < n; ++rr) s += w[i * R + rr] * x[j * R + rr];
      out[i * NR + j] += s;
    }
}

constexpr i64 GROUP_COLS = 64;  // output columns whose im2col rows are built and consumed together
constexpr i64 R_CHUNK = 1024;   // reduction chunk: MR weight rows x 4 KB stay in L1 while the columns stream

// dot_block for a remainder block of mr <= MRr rows and nr <= NRr columns.
template <class V, int MRr, int NRr>
MS_INLINE void dot_any(i64 mr, i64 nr, const float* w, const float* x, i64 R, i64 n, float* out) {
  if constexpr (MRr > 1)
    if (mr < MRr) return dot_any<V, MRr - 1, NRr>(mr, nr, w, x, R, n, out);
  if constexpr (NRr > 1)
    if (nr < NRr) return dot_any<V, MRr, NRr - 1>(mr, nr, w, x, R, n, out);
  dot_block<V, MRr, NRr>(w, x, R, n, out);
}

// Outputs for weight rows co0..co0+mr-1 and columns c0..c0+nc-1 (im2col rows xc), with the fused epilogue.
// MR weight rows x NR im2col rows per register block (MR*NR vector accumulators).
template <class V, int MR, int NR>
MS_INLINE void rowblock_impl(const CausalConvArgs& a, const float* xc, i64 R, i64 co0, i64 mr, i64 c0, i64 nc) {
  const float* w = reinterpret_cast<const float*>(a.weight) + co0 * R;
  const float* bias = reinterpret_cast<const float*>(a.bias);
  const float* res = reinterpret_cast<const float*>(a.residual);
  float* y = reinterpret_cast<float*>(a.y);
  float acc[MR * GROUP_COLS];  // [i][c] partial sums of this row block over the reduction chunks so far
  std::fill(acc, acc + MR * GROUP_COLS, 0.f);
  for (i64 r0 = 0; r0 < R; r0 += R_CHUNK) {
    const i64 n = std::min(R_CHUNK, R - r0);
    for (i64 c = 0; c < nc; c += NR) {
      const i64 nr = std::min<i64>(NR, nc - c);
      float out[MR * NR] = {0.f};
      if (mr == MR && nr == NR)
        dot_block<V, MR, NR>(w + r0, xc + c * R + r0, R, n, out);
      else
        dot_any<V, MR, NR>(mr, nr, w + r0, xc + c * R + r0, R, n, out);
      for (i64 i = 0; i < mr; ++i)
        for (i64 j = 0; j < nr; ++j) acc[i * GROUP_COLS + c + j] += out[i * nr + j];
    }
  }
  for (i64 c = 0; c < nc; ++c) {
    const i64 col = c0 + c, b = col / a.Tout, t = col % a.Tout;
    for (i64 i = 0; i < mr; ++i) {
      const i64 co = co0 + i, o = (b * a.Cout + co) * a.Tout + t;
      float v = acc[i * GROUP_COLS + c] + (bias ? bias[co] : 0.f);
      if (a.post_relu && v < 0.f) v = 0.f;
      if (res) v += res[o];
      y[o] = v;
    }
  }
}

using RowblockFn = void (*)(const CausalConvArgs&, const float*, i64, i64, i64, i64, i64);
struct Kernel {
  RowblockFn fn;
  int rows;  // weight rows per call (MR)
  const char* isa;
};
// Register blocks per instruction set: (MR weight rows, NR columns).
constexpr int GENERIC_MR = 4, AVX2_MR = 4, AVX512_MR = 6;

void rowblock_generic(const CausalConvArgs& a, const float* xc, i64 R, i64 co0, i64 mr, i64 c0, i64 nc) {
  rowblock_impl<v8f, GENERIC_MR, 2>(a, xc, R, co0, mr, c0, nc);
}
#ifdef MS_X86_DISPATCH
__attribute__((target("avx2,fma"))) void rowblock_avx2(const CausalConvArgs& a, const float* xc, i64 R, i64 co0,
                                                     i64 mr, i64 c0, i64 nc) {
  rowblock_impl<v8f, AVX2_MR, 3>(a, xc, R, co0, mr, c0, nc);  // 12 accumulators + 3 inputs in 16 ymm registers
}
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
void rowblock_avx512(const CausalConvArgs& a, const float* xc, i64 R, i64 co0, i64 mr, i64 c0, i64 nc) {
  rowblock_impl<v16f, AVX512_MR, 4>(a, xc, R, co0, mr, c0, nc);  // 24 accumulators + 4 inputs of 32 zmm
}
#endif

// The fastest kernel this CPU runs, or the one named by `isa` ("avx512", "avx2", "generic"; for tests).
Kernel pick_kernel(const std::string& isa = "") {
  std::vector<Kernel> usable;  // fastest first
#ifdef MS_X86_DISPATCH
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    usable.push_back({&rowblock_avx512, AVX512_MR, "avx512"});
  if (avx2) usable.push_back({&rowblock_avx2, AVX2_MR, "avx2"});
#endif
  usable.push_back({&rowblock_generic, GENERIC_MR, "generic"});
  if (isa.empty()) return usable.front();
  for (const Kernel& k : usable)
    if (isa == k.isa) return k;
  throw std::invalid_argument("causal_conv1d_f32: instruction set '" + isa + "' is not available on this CPU/build");
}

const char* cpu_isa() { return pick_kernel().isa; }

void conv_f32(const CausalConvArgs& a, int nthreads, const Kernel& kernel) {
  const bool has_state = a.state != 0 && a.pre > 0;
  const Src src{reinterpret_cast<const float*>(a.x), reinterpret_cast<const float*>(a.state), a.Cin, a.T, a.pre,
                a.pre_relu, has_state};
  const i64 R = a.Cin * a.K, ncol = a.B * a.Tout;
  const i64 MR = kernel.rows, n_rowblocks = (a.Cout + MR - 1) / MR;
  std::vector<float> cols((size_t)(std::min(ncol, GROUP_COLS) * R));
  (void)nthreads;

  for (i64 c0 = 0; c0 < ncol; c0 += GROUP_COLS) {
    const i64 nc = std::min(GROUP_COLS, ncol - c0);
    float* xc = cols.data();
    // im2col rows for columns c0..c0+nc: row c holds stream[b, ci, t*stride + j*dilation] at ci*K + j.
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && nc * R > 32768)
    for (i64 c = 0; c < nc; ++c) {
      const i64 b = (c0 + c) / a.Tout, t = (c0 + c) % a.Tout;
      float* row = xc + c * R;
      for (i64 ci = 0; ci < a.Cin; ++ci)
        for (i64 j = 0; j < a.K; ++j) row[ci * a.K + j] = src.at(b, ci, t * a.stride + j * a.dilation);
    }
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && nc * R * a.Cout > 262144)
    for (i64 rb = 0; rb < n_rowblocks; ++rb)
      kernel.fn(a, xc, R, rb * MR, std::min<i64>(MR, a.Cout - rb * MR), c0, nc);
  }

  // Streaming: new_state = last `pre` entries of [state | x] (activated), i.e. stream positions T .. T+pre-1.
  if (a.new_state && a.pre > 0) {
    float* ns = reinterpret_cast<float*>(a.new_state);
    for (i64 b = 0; b < a.B; ++b)
      for (i64 ci = 0; ci < a.Cin; ++ci)
        for (i64 i = 0; i < a.pre; ++i) ns[(b * a.Cin + ci) * a.pre + i] = src.at(b, ci, a.T + i);
  }
}

void causal_conv1d_f32(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias, std::uintptr_t residual,
                       std::uintptr_t y, std::uintptr_t state, std::uintptr_t new_state, i64 B, i64 Cin, i64 T,
                       i64 Cout, i64 K, i64 stride, i64 dilation, i64 pre, i64 Tout, bool pre_relu, bool post_relu,
                       int num_threads, const std::string& isa) {
  static const Kernel best = pick_kernel();
  CausalConvArgs a{x, weight, bias, residual, y, state, new_state, B, Cin, T, Cout, K, stride, dilation, pre, Tout,
                   pre_relu, post_relu};
  causal_conv_check(a, "causal_conv1d_f32");
  const Kernel kernel = isa.empty() ? best : pick_kernel(isa);
  pybind11::gil_scoped_release nogil;
  conv_f32(a, std::max(1, num_threads), kernel);
}

}  // namespace

void register_cpu_causal_conv(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("causal_conv1d_f32", &causal_conv1d_f32,
        "CPU fp32 causal conv1d over [prefix | x] (see csrc/causal_conv.h); fills y (B,Cout,Tout) and, when "
        "new_state != 0, the streaming state (B,Cin,pre). All tensors contiguous, passed as data pointers.",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("y"), py::arg("state"),
        py::arg("new_state"), py::arg("B"), py::arg("Cin"), py::arg("T"), py::arg("Cout"), py::arg("K"),
        py::arg("stride"), py::arg("dilation"), py::arg("pre"), py::arg("Tout"), py::arg("pre_relu"),
        py::arg("post_relu"), py::arg("num_threads") = 1, py::arg("isa") = "");
  m.def("openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "True when the CPU kernels were built with OpenMP");
  m.def("cpu_isa", &cpu_isa, "instruction set the CPU causal conv runs with: avx512, avx2 or generic");
}

}  // namespace motionstreamer
