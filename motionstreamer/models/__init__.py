"""The MotionStreamer model family, one model per file (imported on demand, nothing here is eager):

tae.py          Causal TAE (272-dim frames <-> 16-dim latents, 4x in time) with a streaming decoder
transformer.py  text-to-motion causal transformer (LLaMA blocks, QK-Norm, RoPE, KV cache)
diffusion.py    diffusion head (MLP with AdaLN), schedules and samplers with CFG
evaluator.py    TMR/TEMOS-style text-motion evaluator for the metrics
text.py         sentence-transformers text encoders (offline MiniLM, sentence-t5-xxl), cached
commands.py     `convert-checkpoint` and `download` verbs (checkpoint I/O lives in motionstreamer.checkpoints)
"""
