"""motionstreamer: streaming text-to-motion generation (MotionStreamer family).

Sub-packages: representation (272-dim format), data, models, runtime (streaming engine),
train, eval, export (ONNX), io (BVH, video), kernels (Triton), ops (native causal conv).
"""
__version__ = "0.1.0"

# The 272-dim format's constants (spec representation-272), defined here once and imported everywhere.
FPS = 30                                  # frames per second of every motion
NUM_JOINTS = 22                           # SMPL body joints
FEATURE_DIM = 8 + 12 * NUM_JOINTS         # 272: root (8) + positions, velocities (3 each) + 6D rotations per joint
FRAMES_PER_LATENT = 4                     # the Causal TAE's temporal downsampling
