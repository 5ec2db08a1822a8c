#include <cuda_runtime.h>
#include <cstdint>
#include <stdexcept>
#include <string>
#include "ops.h"

namespace motionstreamer {
namespace {
__global__ void relu_f32_kernel(float* x, std::int64_t n) {
  std::int64_t i = blockIdx.x * (std::int64_t)blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] > 0.f ? x[i] : 0.f;
}

void relu_f32_cuda_(std::uintptr_t ptr, std::int64_t n, std::uintptr_t stream) {
  if (n == 0) return;
  int threads = 256;
  unsigned blocks = (unsigned)((n + threads - 1) / threads);
  relu_f32_kernel<<<blocks, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(reinterpret_cast<float*>(ptr), n);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("relu_f32_cuda_: ") + cudaGetErrorString(err));
}
}  // namespace

void register_cuda_ops(pybind11::module_& m) {
  m.def("relu_f32_cuda_", &relu_f32_cuda_, "in-place ReLU on a CUDA float32 buffer (pointer, n, stream)");
}
}  // namespace motionstreamer
