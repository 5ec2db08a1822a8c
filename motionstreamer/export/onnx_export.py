"""ONNX export of the streaming pieces, with explicit state in and out and a dynamic batch.

Graphs (fp32, legacy TorchScript exporter, opset 17):
  prefill.onnx      text (B, text_dim), latents (B, block-1, 16), n_latents (B,) int64
                    [, goal (B, 8): a goal-trained model's raw goal, added to the newest token]
                    -> cond (B, E), k_cache, v_cache (n_layer, B, H, block, D)
                    The latents are padded to a fixed length: attention is causal, so positions after
                    n_latents never change the valid ones, and the decode mask hides them.
  decode_step.onnx  latent (B, 16), k_cache, v_cache, pos (B,) int64 [, goal (B, 8)]
                    -> cond (B, E), k_cache, v_cache
                    (the new key/value written at `pos`, RoPE at `pos`, attention over positions <= pos)
  head_<sampler><steps>.onnx  cond (B, E), uncond (B, E), x_T (B, 16), step_noise (S, B, 16),
                    cfg_scale (1,), temperature (1,) -> latent (B, 16): the whole guided sampling loop
  tae_decode_step.onnx  z (B, 16), state_i (B, C_i, S_i) for each decoder conv -> frames (B, 4, 272), state_i
  prefill_student.onnx, decode_step_student.onnx  (a student with its own conditional path,
                    models/few_step.py) the same graphs of the model a student stream runs; the manifest's
                    "student_transformer" names them
manifest.json: names, shapes, the bundle config, Mean/Std/end latent, exported sampler settings.
Every graph goes through onnx.checker; tests compare each with its PyTorch module.

quantize="int8": the transformer (prefill, decode step) and head graphs are then rewritten in place with
onnxruntime's dynamic quantization: int8 weights for every MatMul/Gemm with a constant weight, activations
quantized per call (inputs, outputs and the KV cache stay fp32, so the engine runs either export alike).
The manifest's "quantization" entry names the rewritten files and the scheme.

The weights use 7 bits of the int8 range (`reduce_range`, WEIGHT_QMAX): x86 CPUs without VNNI (AVX2,
AVX-512 without VNNI) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds adjacent
products in int16 and saturates: 2 * 255 * 127 overflows 32767, 2 * 255 * 64 = 32640 does not. With
full-range weights the int8 graphs gave 7x the error on an AVX2 CPU (qemu -cpu Haswell) of the same
graphs on an AVX-512-VNNI one; with 7-bit weights every x86 CPU computes the same integers, and the
outputs are bit-identical (tests/test_export_onnx.py runs them under qemu's Haswell model).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from motionstreamer.checkpoints import bundle_config_of
from motionstreamer.models.goal import GOAL_DIM
from motionstreamer.models.sampling import SamplerSettings, sample_loop
from motionstreamer.models.transformer import KVWriter, decode_mask
from motionstreamer.utils import atomic_path, atomic_write_json

OPSET = 17
# 3: the head graphs' guidance input is cfg_scale (2: cfg; the onnxruntime engine reads both)
MANIFEST_VERSION = 3


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

    def forward(self, text, latents, n_latents, goal=None):
        m, kv = self.m, CollectingWriter()
        x = m.with_goal(m.embed(latents, text), goal, n_latents)   # the goal on the newest token
        T = x.shape[1]
        x = m.run_blocks(x, m.rope_cos[:T], m.rope_sin[:T], kv)
        last = torch.gather(x, 1, n_latents.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1]))[:, 0]
        return m.project(last), torch.stack(kv.k), torch.stack(kv.v)


class DecodeStepGraph(nn.Module):
    def __init__(self, t2m):
        super().__init__()
        self.m = t2m

    def forward(self, latent, k_cache, v_cache, pos, goal=None):
        m, kv = self.m, FunctionalDecodeWriter(k_cache, v_cache, pos)
        x = m.run_blocks(m.with_goal(m.embed(latent[:, None, :], None), goal), *m.rope_at(pos), kv)
        return m.project(x[:, 0]), torch.stack(kv.k), torch.stack(kv.v)


class HeadSampleGraph(nn.Module):
    """The guided sampling loop of one (sampler, steps): the model's sample_loop, with cfg_scale and
    temperature as graph inputs. head: the t2m model's DiffLoss."""

    def __init__(self, head, settings: SamplerSettings):
        super().__init__()
        self.head, self.settings = head, settings

    def loop(self, c, x_T, step_noise, cfg_scale, temperature):
        h, s = self.head, self.settings
        eps_at = h.eps_function(c, h.model_timesteps(s.sampling_steps, c.device, s.skip_terminal_step))
        coefs = h.sampling_process(s.sampling_steps, s.skip_terminal_step).step_coefficients(s.sampler, s.eta)
        return sample_loop(eps_at, x_T, coefs, step_noise, cfg_scale, temperature)

    def forward(self, cond, uncond, x_T, step_noise, cfg_scale, temperature):
        return self.loop(torch.cat([cond, uncond]), x_T, step_noise, cfg_scale, temperature)


class StudentSampleGraph(HeadSampleGraph):
    """A one-row few-step student's loop (head: the bundle's StudentHead, cfg_scale 1): no uncond and no
    cfg_scale inputs. A student that keeps guidance is exported as a HeadSampleGraph, the teacher's form."""

    def forward(self, cond, x_T, step_noise, temperature):
        return self.loop(cond, x_T, step_noise, None, temperature)


class TAEStepGraph(nn.Module):
    def __init__(self, tae):
        super().__init__()
        self.tae = tae

    def forward(self, z, *states):
        frames, new = self.tae.decode_step_functional(z[:, None, :], list(states))
        return (frames, *new)


QUANTIZE = ("int8",)
# int8 weights are symmetric in [-WEIGHT_QMAX, WEIGHT_QMAX] (onnxruntime's reduce_range): the
# uint8 x int8 pair sums of non-VNNI x86 kernels then fit int16 (module docstring)
WEIGHT_QMAX = 64


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
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[w]).T.copy(),
                                                                       w + "_T"))
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
    """Replace the fp32 graph at `path` by its int8 dynamic quantization (weights int8 in
    [-WEIGHT_QMAX, WEIGHT_QMAX], activations uint8 per call), atomically, checked. Conv stays fp32
    (see export_bundle)."""

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _gemm_to_matmul(onnx.load(str(path)))
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # the quantizer warns about pre-processing on every graph
    try:
        with atomic_path(path) as tmp:
            quantize_dynamic(model, str(tmp), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                             weight_type=QuantType.QInt8, reduce_range=True)
            onnx.checker.check_model(onnx.load(str(tmp)))
    finally:
        logging.getLogger().setLevel(level)


@dataclass
class GraphSpec:
    """One exported graph: its module and named inputs/outputs with their shapes ("B": the dynamic
    batch axis). The example inputs, the exporter's dynamic axes and the manifest entry come from it."""
    file: str
    module: nn.Module
    inputs: dict
    outputs: dict

    def example_inputs(self) -> tuple:
        batch = 2
        return tuple(torch.zeros([batch if d == "B" else d for d in shape],
                                 dtype=torch.long if name in INT_INPUTS else torch.float32)
                     for name, shape in self.inputs.items())

    def dynamic_axes(self) -> dict:
        return {name: {shape.index("B"): "batch"} for name, shape in {**self.inputs, **self.outputs}.items()
                if "B" in shape}

    def export(self, out: Path) -> None:
        import onnx

        with atomic_path(out / self.file) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.module, self.example_inputs(), str(tmp), input_names=list(self.inputs),
                              output_names=list(self.outputs), dynamic_axes=self.dynamic_axes(),
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
            onnx.checker.check_model(onnx.load(str(tmp)))

    def manifest_entry(self) -> dict:
        return {"file": self.file, "inputs": self.inputs, "outputs": self.outputs}


INT_INPUTS = ("n_latents", "pos")
STUDENT_SUFFIX = "_student"


def head_graph_name(s: SamplerSettings) -> str:
    return f"head_student{s.sampling_steps}" if s.head == "student" else f"head_{s.sampler}{s.sampling_steps}"


def transformer_specs(t2m, suffix: str = "") -> dict:
    """The prefill and decode-step graphs of a text-to-motion model (the teacher's, or suffix "_student":
    the model a student stream runs)."""
    c = t2m.config
    E, Z, T = c.n_embd, c.latent_dim, c.block_size
    cache = [c.n_layer, "B", c.n_head, T, c.head_dim]
    # a goal-trained model's transformer graphs take the raw goal (models/goal.py) as one more input
    goal = {"goal": ["B", GOAL_DIM]} if t2m.goal_embed is not None else {}
    return {
        f"prefill{suffix}": GraphSpec(f"prefill{suffix}.onnx", PrefillGraph(t2m),
                                      {"text": ["B", c.cond_dim], "latents": ["B", T - 1, Z], "n_latents": ["B"],
                                       **goal},
                                      {"cond": ["B", E], "k_cache": cache, "v_cache": cache}),
        f"decode_step{suffix}": GraphSpec(f"decode_step{suffix}.onnx", DecodeStepGraph(t2m),
                                          {"latent": ["B", Z], "k_cache": cache, "v_cache": cache, "pos": ["B"],
                                           **goal},
                                          {"cond": ["B", E], "k_cache_out": cache, "v_cache_out": cache}),
    }


def graph_specs(t2m, tae, heads: list[SamplerSettings], student=None) -> dict:
    """The streaming graphs of a model, by name (student: the bundle's few-step head, for the heads
    with head="student", and its transformer graphs when it owns a conditional path)."""
    c = t2m.config
    E, Z = c.n_embd, c.latent_dim
    states = {f"state_{i}": ["B", *map(int, b.shape[1:])] for i, b in enumerate(tae.init_decode_state(1).buffers)}
    specs = {
        **transformer_specs(t2m),
        "tae_decode_step": GraphSpec("tae_decode_step.onnx", TAEStepGraph(tae), {"z": ["B", Z], **states},
                                     {"frames": ["B", tae.config.frames_per_latent, tae.config.in_dim],
                                      **{f"{k}_out": v for k, v in states.items()}}),
    }
    if student is not None and student.condition is not None and any(s.head == "student" for s in heads):
        specs.update(transformer_specs(student.model(t2m), STUDENT_SUFFIX))
    for s in heads:
        name = head_graph_name(s)
        if s.head == "student" and not s.guided:
            S = student.sampling_process(s.sampling_steps).num_timesteps
            specs[name] = GraphSpec(f"{name}.onnx", StudentSampleGraph(student, s),
                                    {"cond": ["B", E], "x_T": ["B", Z], "step_noise": [S, "B", Z], "temperature": [1]},
                                    {"latent": ["B", Z]})
            continue
        head = student if s.head == "student" else t2m.diff_loss   # a guided student: the teacher's graph form
        S = head.sampling_process(s.sampling_steps, s.skip_terminal_step).num_timesteps
        specs[name] = GraphSpec(
            f"{name}.onnx", HeadSampleGraph(head, s),
            {"cond": ["B", E], "uncond": ["B", E], "x_T": ["B", Z], "step_noise": [S, "B", Z], "cfg_scale": [1],
             "temperature": [1]}, {"latent": ["B", Z]})
    return specs


@torch.no_grad()
def export_bundle(bundle, out_dir: str | Path, variants=None,
                  quantize: str | None = None) -> dict:
    """Export a loaded bundle (fp32, CPU) to out_dir; returns the manifest.

    variants: (sampler, sampling_steps) pairs, one guided head graph each, with the bundle's
    skip_terminal_step; ("student", k) exports the bundle's few-step student at k steps (one row, no
    guidance inputs; k among the counts it supports). None: ddpm 50 and 10, plus every count of the
    student when the bundle has one. quantize="int8": int8 weights in the transformer and head graphs (module
    docstring)."""
    if quantize not in (None, *QUANTIZE):
        raise ValueError(f"quantize={quantize!r}: use one of {', '.join(QUANTIZE)} (or None for fp32)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tae, t2m = bundle.tae.float().cpu().eval(), bundle.t2m.float().cpu().eval()
    bundle_config = bundle_config_of(bundle)
    skip = bool(bundle_config.sampler.skip_terminal_step)
    student = getattr(bundle, "student", None)
    if variants is None:
        variants = [("ddpm", 50), ("ddpm", 10)] + \
            ([("student", k) for k in student.student_config.steps] if student is not None else [])
    heads = []
    for sampler, n in variants:
        if sampler == "student":
            if student is None:
                raise ValueError("variant ('student', ...): this bundle has no few-step student head")
            student.student_config.check_steps(n)
            heads.append(SamplerSettings(sampling_steps=n, skip_terminal_step=skip, head="student",
                                         cfg_scale=student.student_config.cfg_scale))
        else:
            heads.append(SamplerSettings(sampling_steps=n, sampler=sampler, skip_terminal_step=skip))
    specs = graph_specs(t2m, tae, heads, student.float().cpu().eval() if student is not None else None)
    for spec in specs.values():
        spec.export(out)
    head_files = [specs[head_graph_name(h)] for h in heads]
    # Per-channel weight scales where they helped on the embedded model (relative error of one graph
    # call vs fp32): transformer cond 0.037 -> 0.035 per-channel; head latent 0.018 per-tensor vs 0.019.
    # The TAE decoder stays fp32: int8 Conv (ConvInteger) tripled the frame error of a stream in the
    # tests' model (joints rel. error 0.05 -> 0.16), and it runs once per latent against one decode
    # step and a 10-50 step head loop, so int8 there buys little time.
    student_files = [specs[n].file for n in (f"prefill{STUDENT_SUFFIX}", f"decode_step{STUDENT_SUFFIX}") if n in specs]
    quantized = {**{f: {"per_channel": True} for f in ["prefill.onnx", "decode_step.onnx", *student_files]},
                 **{h.file: {"per_channel": False} for h in head_files}}
    for f, how in quantized.items() if quantize else []:
        _quantize_int8(out / f, how["per_channel"])
    c = t2m.config
    manifest = {
        "format": "motionstreamer-onnx", "version": MANIFEST_VERSION, "opset": OPSET, "dtype": "float32",
        "config": bundle_config.to_dict(), "text_encoder": bundle_config.text_encoder,
        "n_layer": c.n_layer, "n_head": c.n_head, "head_dim": c.head_dim, "block_size": c.block_size,
        "n_embd": c.n_embd, "latent_dim": c.latent_dim, "text_dim": c.cond_dim, "goal": t2m.goal_embed is not None,
        "tae_states": [spec[1:] for name, spec in specs["tae_decode_step"].inputs.items() if name != "z"],
        # the transformer graphs of a student stream, when the student owns its conditional path
        "student_transformer": ({"prefill": student_files[0], "decode_step": student_files[1]}
                                if student_files else None),
        "heads": [{"file": spec.file, "head": h.head, "sampler": h.sampler, "sampling_steps": h.sampling_steps,
                   "skip_terminal_step": h.skip_terminal_step, "noise_steps": spec.inputs["step_noise"][0]}
                  for h, spec in zip(heads, head_files)],
        "quantization": {"weights": "int8", "method": "onnxruntime.quantization.quantize_dynamic",
                         "weight_type": "QInt8", "weight_range": [-WEIGHT_QMAX, WEIGHT_QMAX],
                         "activations": "uint8, dynamic", "ops": ["MatMul", "Gemm"],
                         "files": quantized, "fp32_files": ["tae_decode_step.onnx"]}
                        if quantize else None,
        "mean": bundle.mean.float().cpu().tolist(), "std": bundle.std.float().cpu().tolist(),
        "end_latent": bundle.end_latent.float().cpu().reshape(-1).tolist(),
        "graphs": {name: spec.manifest_entry() for name, spec in specs.items()},
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


# what the onnxruntime engine reads from every manifest version
MANIFEST_REQUIRED = ("text_encoder", "n_layer", "n_head", "head_dim", "block_size", "latent_dim", "tae_states",
                     "heads", "mean", "std", "end_latent", "graphs")


def read_manifest(directory: str | Path) -> dict:
    """An export's manifest.json, checked: FileNotFoundError or ValueError naming the file when it is
    missing, not UTF-8 JSON, not an object, of another format, or without a key the engine reads."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an exported model folder (run `motionstreamer export-onnx`)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not a JSON manifest ({e})") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path}: a JSON object expected, got {type(m).__name__}")
    if m.get("format") != "motionstreamer-onnx":
        raise ValueError(f"{path}: format {m.get('format')!r} is not 'motionstreamer-onnx'")
    missing = [k for k in MANIFEST_REQUIRED if k not in m]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)} (an interrupted or hand-edited export: run "
                         "`motionstreamer export-onnx` again)")
    return m
