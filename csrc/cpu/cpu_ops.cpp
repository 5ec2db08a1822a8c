#include <cstdint>
#include "ops.h"

namespace motionstreamer {

bool with_cuda() {
#ifdef MOTIONSTREAMER_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {
// out[i] = max(x[i], 0) in place over n float32 values at address ptr (a first, tiny op that proves the
// pointer-passing convention; the causal-conv ops follow the same pattern).
void relu_f32_(std::uintptr_t ptr, std::int64_t n) {
  float* x = reinterpret_cast<float*>(ptr);
  for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.f ? x[i] : 0.f;
}
}  // namespace

void register_cpu_ops(pybind11::module_& m) {
  m.def("relu_f32_", &relu_f32_, "in-place ReLU over n contiguous float32 values at a data pointer");
}

}  // namespace motionstreamer
