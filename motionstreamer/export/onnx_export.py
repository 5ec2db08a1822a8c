"""ONNX export of the streaming pieces, with explicit state in and out and a dynamic batch.

Graphs (fp32, legacy TorchScript exporter, opset 17):
  prefill.onnx      text (B, text_dim), latents (B, block-1, 16), n_latents (B,) int64
                    -> cond (B, E), k_cache, v_cache (n_layer, B, H, block, D)
                    The latents are padded to a fixed length: attention is causal, so positions after
                    n_latents never change the valid ones, and the decode mask hides them.
  decode_step.onnx  latent (B, 16), k_cache, v_cache, pos (B,) int64 -> cond (B, E), k_cache, v_cache
                    (the new key/value written at `pos`, RoPE at `pos`, attention over positions <= pos)
  head_<method><steps>.onnx  cond (B, E), uncond (B, E), x_T (B, 16), step_noise (S, B, 16),
                    cfg (1,), temperature (1,) -> latent (B, 16): the whole guided sampling loop
  tae_decode_step.onnx  z (B, 16), state_i (B, C_i, S_i) for each decoder conv -> frames (B, 4, 272), state_i
manifest.json: names, shapes, the bundle config, Mean/Std/end latent, exported sampler settings.
Every graph goes through onnx.checker; tests compare each with its PyTorch module.

quantize="int8": the transformer (prefill, decode step) and head graphs are then rewritten in place with
onnxruntime's dynamic quantization: int8 weights for every MatMul/Gemm with a constant weight, activations
quantized per call (inputs, outputs and the KV cache stay fp32, so the engine runs either export alike).
The manifest's "quantization" entry names the rewritten files and the scheme.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from motionstreamer.models.transformer import KVWriter, decode_mask

OPSET = 17


class CollectingWriter(KVWriter):
    """Prefill as a graph: the tokens' k/v of every layer are collected as outputs; the plain "math"
    attention (the legacy exporter traces it as ops ONNX has)."""
    attn_backend = "math"

    def __init__(self):
        super().__init__()
        self.k, self.v = [], []

    def update(self, layer, k, v):
        self.k.append(k)
        self.v.append(v)
        return k, v


class FunctionalDecodeWriter(CollectingWriter):
    """A decode step as a graph: the new k/v blended into copies of the cache inputs at `pos` (no
    in-place write), the copies collected as the cache outputs."""
    causal = False

    def __init__(self, k_cache, v_cache, pos):
        super().__init__()
        self.k_cache, self.v_cache = k_cache, v_cache
        T = k_cache.shape[3]
        self.onehot = (torch.arange(T, device=pos.device)[None, :] == pos[:, None]).to(k_cache.dtype)[:, None, :, None]
        self.mask = decode_mask(pos, T)

    def update(self, layer, k, v):
        keep = 1 - self.onehot
        return super().update(layer, self.k_cache[layer] * keep + k * self.onehot,
                              self.v_cache[layer] * keep + v * self.onehot)


class PrefillGraph(nn.Module):
    def __init__(self, t2m):
        super().__init__()
        self.m = t2m

    def forward(self, text, latents, n_latents):
        m, kv = self.m, CollectingWriter()
        x = m.embed(latents, text)
        T = x.shape[1]
        x = m.run_blocks(x, m.rope_cos[:T], m.rope_sin[:T], kv)
        last = torch.gather(x, 1, n_latents.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1]))[:, 0]
        return m.project(last), torch.stack(kv.k), torch.stack(kv.v)


class DecodeStepGraph(nn.Module):
    def __init__(self, t2m):
        super().__init__()
        self.m = t2m

    def forward(self, latent, k_cache, v_cache, pos):
        m, kv = self.m, FunctionalDecodeWriter(k_cache, v_cache, pos)
        x = m.run_blocks(m.embed(latent[:, None, :], None), *m.rope_at(pos), kv)
        return m.project(x[:, 0]), torch.stack(kv.k), torch.stack(kv.v)


class HeadSampleGraph(nn.Module):
    def __init__(self, t2m, steps: int, method: str, skip_terminal: bool = False):
        super().__init__()
        self.head, self.steps, self.method, self.skip = t2m.diff_loss, steps, method, skip_terminal

    def forward(self, cond, uncond, x_T, step_noise, cfg, temperature):
        return self.head.sample(cond, uncond=uncond, cfg=cfg, temperature=temperature, steps=self.steps,
                                method=self.method, noise=(x_T, step_noise), fast=True, skip_terminal=self.skip)


class TAEStepGraph(nn.Module):
    def __init__(self, tae):
        super().__init__()
        self.tae = tae

    def forward(self, z, *states):
        frames, new = self.tae.decode_step_functional(z[:, None, :], list(states))
        return (frames, *new)


QUANTIZE = ("int8",)


def _gemm_to_matmul(model):
    """Gemm(x, W, b, transB) -> MatMul(x, W^T) + Add(b): onnxruntime's dynamic quantizer handles
    MatMul but not Gemm (the exporter's form of nn.Linear on 2-D inputs, i.e. the whole head)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, transposed = [], {}
    for n in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type != "Gemm" or n.input[1] not in inits or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 \
                or a.get("beta", 1.0) != 1.0:
            nodes.append(n)
            continue
        w = n.input[1]
        if a.get("transB", 0):
            if w not in transposed:
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[w]).T.copy(), w + "_T"))
                transposed[w] = w + "_T"
            w = transposed[w]
        mm = n.output[0] + "_matmul" if len(n.input) > 2 else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], w], [mm], n.name + "_matmul"))
        if len(n.input) > 2:
            nodes.append(helper.make_node("Add", [mm, n.input[2]], n.output[:1], n.name + "_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def _quantize_int8(path: Path, per_channel: bool) -> None:
    """Replace the fp32 graph at `path` by its int8 dynamic quantization (weights int8, activations
    uint8 per call), atomically, checked. Conv stays fp32 (see export_bundle)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from motionstreamer.utils import atomic_path

    model = _gemm_to_matmul(onnx.load(str(path)))
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # the quantizer warns about pre-processing on every graph
    try:
        with atomic_path(path) as tmp:
            quantize_dynamic(model, str(tmp), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                             weight_type=QuantType.QInt8)
            onnx.checker.check_model(onnx.load(str(tmp)))
    finally:
        logging.getLogger().setLevel(level)


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    import onnx
    import warnings

    from motionstreamer.utils import atomic_path

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        onnx.checker.check_model(onnx.load(str(tmp)))


@torch.no_grad()
def export_bundle(bundle, out_dir: str | Path, head_variants=(("ddpm", 50), ("ddpm", 10)),
                  quantize: str | None = None) -> dict:
    """Export a loaded bundle (fp32, CPU) to out_dir; returns the manifest.

    quantize="int8": int8 weights in the transformer and head graphs (module docstring)."""
    if quantize not in (None, *QUANTIZE):
        raise ValueError(f"quantize={quantize!r}: use one of {', '.join(QUANTIZE)} (or None for fp32)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tae, t2m = bundle.tae.float().cpu().eval(), bundle.t2m.float().cpu().eval()
    c = t2m.config
    H, D, T, L = c.n_head, c.n_embd // c.n_head, c.block_size, c.n_layer
    B = 2
    text = torch.zeros(B, c.cond_dim)
    lat = torch.zeros(B, T - 1, c.latent_dim)
    n = torch.zeros(B, dtype=torch.long)
    cache_axes = {1: "batch"}
    _export(PrefillGraph(t2m), (text, lat, n), out / "prefill.onnx", ["text", "latents", "n_latents"],
            ["cond", "k_cache", "v_cache"],
            {"text": {0: "batch"}, "latents": {0: "batch"}, "n_latents": {0: "batch"}, "cond": {0: "batch"},
             "k_cache": cache_axes, "v_cache": cache_axes})
    kc = torch.zeros(L, B, H, T, D)
    _export(DecodeStepGraph(t2m), (torch.zeros(B, c.latent_dim), kc, kc.clone(), n), out / "decode_step.onnx",
            ["latent", "k_cache", "v_cache", "pos"], ["cond", "k_cache_out", "v_cache_out"],
            {"latent": {0: "batch"}, "k_cache": cache_axes, "v_cache": cache_axes, "pos": {0: "batch"},
             "cond": {0: "batch"}, "k_cache_out": cache_axes, "v_cache_out": cache_axes})
    heads = []
    skip = bool(bundle.config.get("sampler", {}).get("skip_terminal_step", False))
    for method, steps in head_variants:
        name = f"head_{method}{steps}.onnx"
        n_noise = t2m.diff_loss.sampling_process(steps, skip).num_timesteps
        _export(HeadSampleGraph(t2m, steps, method, skip),
                (torch.zeros(B, c.n_embd), torch.zeros(B, c.n_embd), torch.zeros(B, c.latent_dim),
                 torch.zeros(n_noise, B, c.latent_dim), torch.tensor([4.0]), torch.tensor([1.0])),
                out / name, ["cond", "uncond", "x_T", "step_noise", "cfg", "temperature"], ["latent"],
                {"cond": {0: "batch"}, "uncond": {0: "batch"}, "x_T": {0: "batch"}, "step_noise": {1: "batch"},
                 "latent": {0: "batch"}})
        heads.append({"file": name, "method": method, "steps": steps, "skip_terminal": skip, "noise_steps": n_noise})
    state = tae.init_decode_state(B, device="cpu", dtype=torch.float32)
    snames = [f"state_{i}" for i in range(len(state.buffers))]
    _export(TAEStepGraph(tae), (torch.zeros(B, c.latent_dim), *state.buffers), out / "tae_decode_step.onnx",
            ["z", *snames], ["frames", *[s + "_out" for s in snames]],
            {k: {0: "batch"} for k in ["z", "frames", *snames, *[s + "_out" for s in snames]]})
    # Per-channel weight scales where they helped on the embedded model (relative error of one graph
    # call vs fp32): transformer cond 0.037 -> 0.035 per-channel; head latent 0.018 per-tensor vs 0.019.
    quantized = {"prefill.onnx": {"per_channel": True}, "decode_step.onnx": {"per_channel": True},
                 **{h["file"]: {"per_channel": False} for h in heads}}
    # The TAE decoder stays fp32: int8 Conv (ConvInteger) tripled the frame error of a stream in the
    # tests' model (joints rel. error 0.05 -> 0.16), and it runs once per latent against one decode
    # step and a 10-50 step head loop, so int8 there buys little time.
    for f, how in quantized.items() if quantize else []:
        _quantize_int8(out / f, how["per_channel"])
    manifest = {
        "format": "motionstreamer-onnx", "version": 1, "opset": OPSET, "dtype": "float32",
        "config": bundle.config, "text_encoder": bundle.text_encoder_name,
        "n_layer": L, "n_head": H, "head_dim": D, "block_size": T, "n_embd": c.n_embd,
        "latent_dim": c.latent_dim, "text_dim": c.cond_dim,
        "tae_states": [list(b.shape[1:]) for b in state.buffers],
        "heads": heads,
        "quantization": {"weights": "int8", "method": "onnxruntime.quantization.quantize_dynamic",
                         "weight_type": "QInt8", "activations": "uint8, dynamic", "ops": ["MatMul", "Gemm"],
                         "files": quantized, "fp32_files": ["tae_decode_step.onnx"]}
                        if quantize else None,
        "mean": bundle.mean.float().cpu().tolist(), "std": bundle.std.float().cpu().tolist(),
        "end_latent": bundle.end_latent.float().cpu().reshape(-1).tolist(),
        "graphs": {
            "prefill": {"file": "prefill.onnx", "inputs": {"text": ["B", c.cond_dim], "latents": ["B", T - 1, c.latent_dim],
                                                           "n_latents": ["B"]},
                        "outputs": {"cond": ["B", c.n_embd], "k_cache": [L, "B", H, T, D], "v_cache": [L, "B", H, T, D]}},
            "decode_step": {"file": "decode_step.onnx", "inputs": {"latent": ["B", c.latent_dim], "k_cache": [L, "B", H, T, D],
                                                                   "v_cache": [L, "B", H, T, D], "pos": ["B"]},
                            "outputs": {"cond": ["B", c.n_embd], "k_cache_out": [L, "B", H, T, D], "v_cache_out": [L, "B", H, T, D]}},
            "tae_decode_step": {"file": "tae_decode_step.onnx", "inputs": {"z": ["B", c.latent_dim]},
                                "outputs": {"frames": ["B", tae.config.frames_per_latent, tae.config.in_dim]}},
        },
    }
    from motionstreamer.utils import atomic_write_json
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an exported model folder (run `motionstreamer export-onnx`)")
    m = json.loads(path.read_text())
    if m.get("format") != "motionstreamer-onnx":
        raise ValueError(f"{path}: format {m.get('format')!r} is not 'motionstreamer-onnx'")
    return m
