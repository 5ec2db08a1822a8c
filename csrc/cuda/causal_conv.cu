// CUDA causal conv1d (full sequence and streaming update) for fp32, fp16 and bf16 with fp32 accumulation.
// Geometry and streaming-state semantics: csrc/causal_conv.h. Tensors arrive as data pointers plus the
// caller's (torch's current) stream; nothing here links torch.
//
// Two kernels, one maths:
//  * gemv_kernel: few output columns (B*Tout <= 64, the streaming decode step at small batch). The op is
//    a GEMV bound by the weight reads (Cout x Cin*K values per layer), so each warp streams one weight row
//    with 16-byte loads (prefetched one batch ahead) against up to 8 im2col columns held in shared memory
//    as fp32 (swizzled so 8-lane phases read contiguous 128 bytes); more columns -> more blocks (grid.y).
//  * gemm_kernel: tiled implicit GEMM, output tile (Cout x columns), reduction over (Cin tile, tap j): the
//    weight tile of tap j is W[co, ci0:ci0+32, j] and the input tile is stream[b, ci0:ci0+32,
//    t*stride + j*dilation], so no division per element. Tensor cores (wmma 16x16x16) for fp16/bf16,
//    register-blocked FMA for fp32; global->register prefetch of the next tile overlaps the current one.
// Both fuse bias, pre-ReLU (on input loads), post-ReLU and the residual add, and both write the new
// streaming state (split across all blocks).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <pybind11/pybind11.h>

#include "causal_conv.h"
#include "ops.h"

namespace motionstreamer {
namespace {

using i64 = std::int64_t;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
struct Conv {
  const T* __restrict__ x;
  const T* __restrict__ w;
  const T* __restrict__ bias;   // nullptr: none
  const T* __restrict__ res;    // nullptr: none
  T* __restrict__ y;
  const T* __restrict__ state;  // nullptr: zero prefix (causal padding)
  T* __restrict__ new_state;    // nullptr: not streaming
  int B, Cin, Tin, Cout, K, stride, dil, pre, Tout;
  bool pre_relu, post_relu;

  // Value the convolution sees at position p of [prefix | x] for (b, ci).
  __device__ __forceinline__ float src(int b, int ci, int p) const {
    float v;
    if (p < pre)
      v = state ? to_f(state[((i64)b * Cin + ci) * pre + p]) : 0.f;
    else
      v = to_f(x[((i64)b * Cin + ci) * Tin + (p - pre)]);
    return (pre_relu && v < 0.f) ? 0.f : v;
  }

  __device__ __forceinline__ void store(int co, int b, int t, float acc) const {
    const i64 o = ((i64)b * Cout + co) * Tout + t;
    float v = acc + (bias ? to_f(bias[co]) : 0.f);
    if (post_relu) v = fmaxf(v, 0.f);
    if (res) v += to_f(res[o]);
    y[o] = from_f<T>(v);
  }

  // new_state[b, ci, i] = stream[b, ci, Tin + i] (the last `pre` entries of [state | x]); this block's slice.
  __device__ void copy_state(i64 block, i64 nblocks) const {
    if (!new_state || pre <= 0) return;
    const i64 total = (i64)B * Cin * pre, chunk = (total + nblocks - 1) / nblocks;
    const i64 start = block * chunk, end = min(total, start + chunk);
    for (i64 e = start + threadIdx.x; e < end; e += blockDim.x) {
      const i64 bc = e / pre;
      new_state[e] = from_f<T>(src((int)(bc / Cin), (int)(bc % Cin), Tin + (int)(e % pre)));
    }
  }
};

// ------------------------------------------------------------------------------------------ GEMV
constexpr int GEMV_WARPS = 8;   // one weight row per warp
constexpr int GEMV_MAXCOL = 8;  // output columns (b, t) per block (blockIdx.y picks the group of 8)
constexpr int GEMV_MAX_NCOL = 64;  // beyond this the weight re-reads per column group cost more than GEMM
constexpr int GEMV_UNROLL = 4;  // 16-byte weight loads in flight per lane
constexpr int GEMV_FILL = 8;    // input loads in flight per thread while building the im2col columns

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Shared-memory position of im2col element r. With 8 values per lane (fp16/bf16) lane L reads r = 8L..8L+7
// as two float4; storing the first and second halves of 8 consecutive groups contiguously makes each
// 8-lane phase of a float4 load hit 32 distinct banks.
template <int VEC>
__device__ __forceinline__ int swz(int r) {
  if constexpr (VEC == 8)
    return (r & ~63) | (((r >> 2) & 1) << 5) | (((r >> 3) & 7) << 2) | (r & 3);
  else
    return r;
}

template <int VEC>
__device__ __forceinline__ float dot_group(const float (&wf)[VEC], const float* xc, int r0) {
  if constexpr (VEC == 8) {
    const int p = swz<8>(r0);
    const float4 a = *reinterpret_cast<const float4*>(xc + p);
    const float4 b = *reinterpret_cast<const float4*>(xc + p + 32);
    return wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z +
           wf[7] * b.w;
  } else if constexpr (VEC == 4) {
    const float4 a = *reinterpret_cast<const float4*>(xc + r0);
    return wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w;
  } else {
    return wf[0] * xc[r0];
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(Conv<T> c) {
  extern __shared__ __align__(16) float xs[];  // [ncol][Rs] im2col columns of this block, fp32
  using P = Pack<T, VEC>;
  const int R = c.Cin * c.K, Rs = (R + 63) & ~63, ngroups = R / VEC;
  const int col0 = blockIdx.y * GEMV_MAXCOL, ncol = min(GEMV_MAXCOL, c.B * c.Tout - col0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int co = blockIdx.x * GEMV_WARPS + warp;
  const bool row_ok = co < c.Cout;
  const P* wrow = reinterpret_cast<const P*>(c.w + (i64)(row_ok ? co : 0) * R);

  // Issue the first weight loads before building the im2col columns so they overlap.
  P buf[GEMV_UNROLL];
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; ++u) {
    const int g = lane + 32 * u;
    if (row_ok && g < ngroups) buf[u] = wrow[g];
  }
  // im2col: element e = (column cc, r = ci*K + j); GEMV_FILL independent loads per thread in flight.
  const int total = ncol * R;
  for (int e0 = threadIdx.x; e0 < total; e0 += GEMV_FILL * blockDim.x) {
    float v[GEMV_FILL];
#pragma unroll
    for (int u = 0; u < GEMV_FILL; ++u) {
      const int e = e0 + u * blockDim.x, cc = e / R, r = e - cc * R, ci = r / c.K, j = r - ci * c.K;
      const int col = col0 + cc;
      v[u] = e < total ? c.src(col / c.Tout, ci, (col % c.Tout) * c.stride + j * c.dil) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < GEMV_FILL; ++u) {
      const int e = e0 + u * blockDim.x, cc = e / R;
      if (e < total) xs[cc * Rs + swz<VEC>(e - cc * R)] = v[u];
    }
  }
  c.copy_state((i64)blockIdx.y * gridDim.x + blockIdx.x, (i64)gridDim.x * gridDim.y);
  __syncthreads();
  if (!row_ok) return;

  float acc[GEMV_MAXCOL];
#pragma unroll
  for (int cc = 0; cc < GEMV_MAXCOL; ++cc) acc[cc] = 0.f;
  for (int base = 0; base < ngroups; base += 32 * GEMV_UNROLL) {
    P cur[GEMV_UNROLL];
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) cur[u] = buf[u];
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {  // next batch in flight while this one is used
      const int g = base + 32 * GEMV_UNROLL + lane + 32 * u;
      if (g < ngroups) buf[u] = wrow[g];
    }
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {
      const int g = base + lane + 32 * u;
      if (g < ngroups) {
        float wf[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) wf[v] = to_f(cur[u].v[v]);
#pragma unroll
        for (int cc = 0; cc < GEMV_MAXCOL; ++cc)
          if (cc < ncol) acc[cc] += dot_group<VEC>(wf, xs + cc * Rs, g * VEC);
      }
    }
  }
#pragma unroll
  for (int cc = 0; cc < GEMV_MAXCOL; ++cc) {
    if (cc < ncol) {
      float s = acc[cc];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == cc) c.store(co, (col0 + cc) / c.Tout, (col0 + cc) % c.Tout, s);
    }
  }
}

// ------------------------------------------------------------------------------------------ GEMM
template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int MIN_BLOCKS_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, BK = 32, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int NT = WARPS_M * WARPS_N * 32, MIN_BLOCKS = MIN_BLOCKS_;  // MIN_BLOCKS caps registers
};
using BigTile = Tile<128, 64, 4, 2, 2>;    // 256 threads, warp tile 32x32, <= 128 registers
using SmallTile = Tile<64, 32, 2, 2, 4>;   // 128 threads, warp tile 32x16 (more blocks for small problems)

template <typename T, class TL>
struct Layout {
  static constexpr bool TC = !std::is_same<T, float>::value;  // tensor cores for fp16/bf16
  // wmma needs ld % 8 == 0 (16-bit) and 32-byte aligned fragments; fp32 FMA reads want conflict-free rows.
  static constexpr int LDA = TL::BK + (TC ? 8 : 1), LDB = TL::BN + (TC ? 8 : 4), LDC = TL::BN + 4;
  static constexpr int A_BYTES = ((TL::BM * LDA * (int)sizeof(T)) + 127) / 128 * 128;
  static constexpr int AB_BYTES = A_BYTES + TL::BK * LDB * (int)sizeof(T);
  static constexpr int C_BYTES = TL::BM * LDC * 4;
  static constexpr int SMEM = AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES;
};

template <typename T, class TL>
struct WmmaCompute {
  using L = Layout<T, TL>;
  static constexpr int WTM = TL::BM / TL::WARPS_M, WTN = TL::BN / TL::WARPS_N, FM = WTM / 16, FN = WTN / 16;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
  int wm, wn;
  __device__ WmmaCompute() {
    const int warp = threadIdx.x >> 5;
    wm = warp / TL::WARPS_N;
    wn = warp % TL::WARPS_N;
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.f);
  }
  __device__ void step(const T* As, const T* Bs) {
    using namespace nvcuda;
#pragma unroll
    for (int k = 0; k < TL::BK; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], As + (wm * WTM + 16 * i) * L::LDA + k, L::LDA);
#pragma unroll
      for (int j = 0; j < FN; ++j) wmma::load_matrix_sync(b[j], Bs + k * L::LDB + wn * WTN + 16 * j, L::LDB);
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
  }
  __device__ void store(float* Cs) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (wm * WTM + 16 * i) * L::LDC + wn * WTN + 16 * j, acc[i][j], L::LDC,
                                        nvcuda::wmma::mem_row_major);
  }
};

template <class TL>
struct FmaCompute {  // fp32: each thread owns a TM x 4 block of the tile
  using L = Layout<float, TL>;
  static constexpr int TN = 4, TGN = TL::BN / TN, TGM = TL::NT / TGN, TM = TL::BM / TGM;
  static_assert(TGM * TM == TL::BM && TGN * TN == TL::BN, "thread grid must tile the block");
  float acc[TM][TN];
  int ty, tx;
  __device__ FmaCompute() {
    ty = threadIdx.x / TGN;
    tx = threadIdx.x % TGN;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
  }
  __device__ void step(const float* As, const float* Bs) {
#pragma unroll 8
    for (int k = 0; k < TL::BK; ++k) {
      const float4 b = *reinterpret_cast<const float4*>(Bs + k * L::LDB + tx * TN);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const float a = As[(ty * TM + i) * L::LDA + k];
        acc[i][0] += a * b.x;
        acc[i][1] += a * b.y;
        acc[i][2] += a * b.z;
        acc[i][3] += a * b.w;
      }
    }
  }
  __device__ void store(float* Cs) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) Cs[(ty * TM + i) * L::LDC + tx * TN + j] = acc[i][j];
  }
};

template <typename T, class TL>
__global__ void __launch_bounds__(TL::NT, TL::MIN_BLOCKS) gemm_kernel(Conv<T> c) {
  using L = Layout<T, TL>;
  using Compute = typename std::conditional<L::TC, WmmaCompute<T, TL>, FmaCompute<TL>>::type;
  constexpr int BM = TL::BM, BN = TL::BN, BK = TL::BK, NT = TL::NT;
  constexpr int A_PER = BM * BK / NT, B_PER = BK * BN / NT;
  static_assert(NT % BK == 0 && NT % BN == 0, "loader layout");
  __shared__ __align__(128) unsigned char smem[L::SMEM];
  T* As = reinterpret_cast<T*>(smem);                // [BM][LDA]  weight tile (co, ci)
  T* Bs = reinterpret_cast<T*>(smem + L::A_BYTES);   // [BK][LDB]  input tile (ci, column)
  float* Cs = reinterpret_cast<float*>(smem);        // [BM][LDC]  result tile, reuses A/B after the loop

  const int tid = threadIdx.x, m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, ncol = c.B * c.Tout;
  // Each thread loads a fixed ci offset of the weight tile and a fixed column of the input tile.
  const int a_kk = tid % BK, a_m = tid / BK;
  const int b_n = tid % BN, b_kk = tid / BN;
  const int col = n0 + b_n;
  const bool col_ok = col < ncol;
  const int cb = col_ok ? col / c.Tout : 0, ct = col_ok ? col % c.Tout : 0;
  const int nkt = ((c.Cin + BK - 1) / BK) * c.K;

  T a_reg[A_PER], b_reg[B_PER];
  auto load_tiles = [&](int kt) {
    const int ci0 = (kt / c.K) * BK, j = kt % c.K;
    const int ci_a = ci0 + a_kk;
#pragma unroll
    for (int q = 0; q < A_PER; ++q) {
      const int co = m0 + a_m + (NT / BK) * q;
      a_reg[q] = (co < c.Cout && ci_a < c.Cin) ? c.w[((i64)co * c.Cin + ci_a) * c.K + j] : from_f<T>(0.f);
    }
    const int p = ct * c.stride + j * c.dil;
#pragma unroll
    for (int q = 0; q < B_PER; ++q) {
      const int ci = ci0 + b_kk + (NT / BN) * q;
      b_reg[q] = from_f<T>((col_ok && ci < c.Cin) ? c.src(cb, ci, p) : 0.f);
    }
  };

  Compute compute;
  load_tiles(0);
  for (int kt = 0; kt < nkt; ++kt) {
#pragma unroll
    for (int q = 0; q < A_PER; ++q) As[(a_m + (NT / BK) * q) * L::LDA + a_kk] = a_reg[q];
#pragma unroll
    for (int q = 0; q < B_PER; ++q) Bs[(b_kk + (NT / BN) * q) * L::LDB + b_n] = b_reg[q];
    __syncthreads();
    if (kt + 1 < nkt) load_tiles(kt + 1);
    compute.step(As, Bs);
    __syncthreads();
  }
  compute.store(Cs);
  __syncthreads();
  if (col_ok) {
#pragma unroll 4
    for (int q = 0; q < BM * BN / NT; ++q) {
      const int m = b_kk + (NT / BN) * q, co = m0 + m;
      if (co < c.Cout) c.store(co, cb, ct, Cs[m * L::LDC + b_n]);
    }
  }
  c.copy_state((i64)blockIdx.y * gridDim.x + blockIdx.x, (i64)gridDim.x * gridDim.y);
}

template <typename T>
__global__ void state_kernel(Conv<T> c) {  // only when there are no outputs (e.g. an empty chunk)
  c.copy_state(blockIdx.x, gridDim.x);
}

// ------------------------------------------------------------------------------------------ host
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("causal_conv1d_cuda: ") + what + ": " +
                                                   cudaGetErrorString(err));
}

int sm_count(int device) {
  static int cache[64] = {0};
  if (device >= 0 && device < 64 && cache[device]) return cache[device];
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  if (device >= 0 && device < 64) cache[device] = n;
  return n;
}

constexpr int GEMV_MAX_SMEM = 96 * 1024;  // fits sm_80 (163 KB) and sm_90 (227 KB) opt-in limits

template <typename T, int VEC>
void launch_gemv(const Conv<T>& c, int smem, int device, cudaStream_t stream) {
  static bool configured[64] = {false};  // per instantiation and device: opt in to > 48 KB once
  if (smem > 48 * 1024 && !(device >= 0 && device < 64 && configured[device])) {
    check(cudaFuncSetAttribute(gemv_kernel<T, VEC>, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMV_MAX_SMEM),
          "cudaFuncSetAttribute");
    if (device >= 0 && device < 64) configured[device] = true;
  }
  const int ncol = c.B * c.Tout;
  dim3 grid((c.Cout + GEMV_WARPS - 1) / GEMV_WARPS, (ncol + GEMV_MAXCOL - 1) / GEMV_MAXCOL);
  gemv_kernel<T, VEC><<<grid, GEMV_WARPS * 32, smem, stream>>>(c);
}

template <typename T, class TL>
void launch_gemm(const Conv<T>& c, cudaStream_t stream) {
  const int ncol = c.B * c.Tout;
  dim3 grid((ncol + TL::BN - 1) / TL::BN, (c.Cout + TL::BM - 1) / TL::BM);
  gemm_kernel<T, TL><<<grid, TL::NT, 0, stream>>>(c);
}

template <typename T>
void run(const CausalConvArgs& a, int device, cudaStream_t stream) {
  Conv<T> c{reinterpret_cast<const T*>(a.x), reinterpret_cast<const T*>(a.weight), reinterpret_cast<const T*>(a.bias),
            reinterpret_cast<const T*>(a.residual), reinterpret_cast<T*>(a.y),
            reinterpret_cast<const T*>(a.pre > 0 ? a.state : 0), reinterpret_cast<T*>(a.new_state),
            (int)a.B, (int)a.Cin, (int)a.T, (int)a.Cout, (int)a.K, (int)a.stride, (int)a.dilation, (int)a.pre,
            (int)a.Tout, a.pre_relu, a.post_relu};
  const i64 ncol = a.B * a.Tout, R = a.Cin * a.K, Rs = (R + 63) / 64 * 64;
  constexpr int VEC = 16 / sizeof(T);
  if (ncol == 0) {
    if (c.new_state && c.pre > 0) {
      const i64 total = a.B * a.Cin * a.pre;
      state_kernel<T><<<(unsigned)((total + 255) / 256 < 1024 ? (total + 255) / 256 : 1024), 256, 0, stream>>>(c);
    }
  } else if (ncol <= GEMV_MAX_NCOL && (ncol < GEMV_MAXCOL ? ncol : GEMV_MAXCOL) * Rs * 4 <= GEMV_MAX_SMEM) {
    const int smem = (int)((ncol < GEMV_MAXCOL ? ncol : GEMV_MAXCOL) * Rs * 4);
    if (a.weight % 16 == 0 && R % VEC == 0)
      launch_gemv<T, VEC>(c, smem, device, stream);
    else
      launch_gemv<T, 1>(c, smem, device, stream);
  } else {
    const i64 big_blocks = ((ncol + BigTile::BN - 1) / BigTile::BN) * ((a.Cout + BigTile::BM - 1) / BigTile::BM);
    if (big_blocks >= sm_count(device))
      launch_gemm<T, BigTile>(c, stream);
    else
      launch_gemm<T, SmallTile>(c, stream);
  }
  check(cudaGetLastError(), "kernel launch");
}

// dtype: 0 = float32, 1 = float16, 2 = bfloat16.
void causal_conv1d_cuda(int dtype, std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias,
                        std::uintptr_t residual, std::uintptr_t y, std::uintptr_t state, std::uintptr_t new_state,
                        i64 B, i64 Cin, i64 T, i64 Cout, i64 K, i64 stride, i64 dilation, i64 pre, i64 Tout,
                        bool pre_relu, bool post_relu, std::uintptr_t stream, int device) {
  CausalConvArgs a{x, weight, bias, residual, y, state, new_state, B, Cin, T, Cout, K, stride, dilation, pre, Tout,
                   pre_relu, post_relu};
  causal_conv_check(a, "causal_conv1d_cuda");
  const i64 limit = (i64)1 << 31;
  if (B * Cin * (T + (pre > 0 ? pre : 0)) >= limit || B * Cout * Tout >= limit || Cout * Cin * K >= limit)
    throw std::invalid_argument("causal_conv1d_cuda: tensors with 2^31 or more elements are not supported");
  pybind11::gil_scoped_release nogil;
  int prev = -1;
  check(cudaGetDevice(&prev), "cudaGetDevice");
  if (prev != device) check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  try {
    switch (dtype) {
      case 0: run<float>(a, device, s); break;
      case 1: run<__half>(a, device, s); break;
      case 2: run<__nv_bfloat16>(a, device, s); break;
      default: throw std::invalid_argument("causal_conv1d_cuda: dtype code must be 0 (f32), 1 (f16) or 2 (bf16)");
    }
  } catch (...) {
    if (prev != device) cudaSetDevice(prev);
    throw;
  }
  if (prev != device) check(cudaSetDevice(prev), "cudaSetDevice");
}

}  // namespace

void register_cuda_causal_conv(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("causal_conv1d_cuda", &causal_conv1d_cuda,
        "CUDA causal conv1d over [prefix | x] (see csrc/causal_conv.h) on `stream` of `device`; dtype 0/1/2 = "
        "f32/f16/bf16 (fp32 accumulation). All tensors contiguous on that device, passed as data pointers.",
        py::arg("dtype"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("y"),
        py::arg("state"), py::arg("new_state"), py::arg("B"), py::arg("Cin"), py::arg("T"), py::arg("Cout"),
        py::arg("K"), py::arg("stride"), py::arg("dilation"), py::arg("pre"), py::arg("Tout"), py::arg("pre_relu"),
        py::arg("post_relu"), py::arg("stream"), py::arg("device"));
}

}  // namespace motionstreamer
