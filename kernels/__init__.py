"""Triton kernels, installed as `motionstreamer.kernels`: one kernel per file, each with a plain
PyTorch reference function beside it."""
