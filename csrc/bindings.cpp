// pybind11 module motionstreamer._C. Tensors cross as raw pointers (+ CUDA stream for device ops):
// the CPU torch on the build machine cannot be linked, so nothing here includes torch headers.
#include <pybind11/pybind11.h>
#include "ops.h"

namespace py = pybind11;

namespace {
bool with_cuda() {
#ifdef MOTIONSTREAMER_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "motionstreamer native ops (causal conv1d, CPU and CUDA)";
  m.def("with_cuda", &with_cuda, "True when the CUDA sources were compiled in");
  motionstreamer::register_cpu_causal_conv(m);
#ifdef MOTIONSTREAMER_WITH_CUDA
  motionstreamer::register_cuda_causal_conv(m);
#endif
}
