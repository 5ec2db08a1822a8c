"""motionstreamer: streaming text-to-motion generation (MotionStreamer family).

Sub-packages: representation (272-dim format), data, models, runtime (streaming engine),
train, eval, export (ONNX), io (BVH, video), kernels (Triton), ops (native causal conv).
"""
__version__ = "0.1.0"

FPS = 30
FEATURE_DIM = 272
NUM_JOINTS = 22
FRAMES_PER_LATENT = 4
