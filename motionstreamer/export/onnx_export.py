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
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from motionstreamer.models.transformer import attention

OPSET = 17


class PrefillGraph(nn.Module):
    def __init__(self, t2m):
        super().__init__()
        self.m = t2m

    def forward(self, text, latents, n_latents):
        m = self.m
        x = m._tokens(latents, text)
        T = x.shape[1]
        cos, sin = m.rope_cos[:T], m.rope_sin[:T]
        ks, vs = [], []
        for blk in m.transformer.h:
            q, k, v = blk.attn.qkv(blk.rms_1(x), cos, sin)
            x = x + blk.attn.out(attention(q, k, v, float(blk.attn.scale), causal=True, backend="math"))
            x = x + blk.mlp(blk.rms_2(x))
            ks.append(k)
            vs.append(v)
        idx = n_latents.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1])
        last = torch.gather(x, 1, idx)[:, 0]
        return m._head(last), torch.stack(ks), torch.stack(vs)


class DecodeStepGraph(nn.Module):
    def __init__(self, t2m):
        super().__init__()
        self.m = t2m

    def forward(self, latent, k_cache, v_cache, pos):
        m = self.m
        T = k_cache.shape[3]
        x = m.transformer.wte(latent)[:, None, :]
        cos, sin = m.rope_cos[pos][:, None, None, :], m.rope_sin[pos][:, None, None, :]
        ar = torch.arange(T, device=latent.device)[None, :]
        onehot = (ar == pos[:, None]).to(x.dtype)[:, None, :, None]          # (B, 1, T, 1)
        mask = (ar <= pos[:, None])[:, None, None, :]                          # (B, 1, 1, T)
        ks, vs = [], []
        for i, blk in enumerate(m.transformer.h):
            q, k, v = blk.attn.qkv(blk.rms_1(x), cos, sin)
            K = k_cache[i] * (1 - onehot) + k * onehot
            V = v_cache[i] * (1 - onehot) + v * onehot
            x = x + blk.attn.out(attention(q, K, V, float(blk.attn.scale), mask=mask, backend="math"))
            x = x + blk.mlp(blk.rms_2(x))
            ks.append(K)
            vs.append(V)
        return m._head(x[:, 0]), torch.stack(ks), torch.stack(vs)


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
def export_bundle(bundle, out_dir: str | Path, head_variants=(("ddpm", 50), ("ddpm", 10))) -> dict:
    """Export a loaded bundle (fp32, CPU) to out_dir; returns the manifest."""
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
    manifest = {
        "format": "motionstreamer-onnx", "version": 1, "opset": OPSET, "dtype": "float32",
        "config": bundle.config, "text_encoder": bundle.text_encoder_name,
        "n_layer": L, "n_head": H, "head_dim": D, "block_size": T, "n_embd": c.n_embd,
        "latent_dim": c.latent_dim, "text_dim": c.cond_dim,
        "tae_states": [list(b.shape[1:]) for b in state.buffers],
        "heads": heads,
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
