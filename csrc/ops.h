#pragma once
#include <pybind11/pybind11.h>

namespace motionstreamer {
bool with_cuda();
void register_cpu_ops(pybind11::module_& m);
void register_cpu_causal_conv(pybind11::module_& m);
#ifdef MOTIONSTREAMER_WITH_CUDA
void register_cuda_ops(pybind11::module_& m);
void register_cuda_causal_conv(pybind11::module_& m);
#endif
}  // namespace motionstreamer
