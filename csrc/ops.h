#pragma once
#include <pybind11/pybind11.h>

namespace motionstreamer {
void register_cpu_causal_conv(pybind11::module_& m);
#ifdef MOTIONSTREAMER_WITH_CUDA
void register_cuda_causal_conv(pybind11::module_& m);
#endif
}  // namespace motionstreamer
