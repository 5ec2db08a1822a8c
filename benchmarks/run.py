#!/usr/bin/env python
"""One entry point for every benchmark: `python benchmarks/run.py [--small|--quick] [--device cuda]`.

Every headline figure is a ratio against the original inference algorithm (runtime/reference.py:
full-prefix recompute, separate cond/uncond forwards, fp32, plain head loop, full TAE re-decode)
measured in the same run on the same weights. Writes benchmarks/results/<device>_<date>.json and a
Markdown table beside it, and prints the table.

Configs: official size by default; --small for quick CPU runs; --quick for the CI smoke run.
Weights are random (speed does not depend on them); end-of-action detection is off so every run
produces the same number of latents.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from motionstreamer import FPS, FRAMES_PER_LATENT

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import time_fn  # noqa: E402

LATENTS_PER_SECOND_REALTIME = FPS / FRAMES_PER_LATENT


# ----------------------------------------------------------------------------- timing helpers
def timeit(fn, device, repeats: int, warmup: int = 1) -> dict:
    return time_fn(fn, device, repeats=repeats, warmup=warmup)


def per_unit(stats: dict, n: int) -> dict:
    """Timing stats of a run of n units (latents, steps) as stats per unit."""
    return {k: (v / n if k in ("min", "median", "max") else v) for k, v in stats.items()}


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        info["name"] = f"cpu-{os.cpu_count()}cores"
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                            capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    return info


def measure_bandwidth(device: torch.device) -> float | None:
    """Device memory bandwidth in bytes/s from a large copy (read + write). On a CPU it is DRAM
    bandwidth at torch's thread count: a bound for models whose weights exceed the caches (official
    size); a small model's weights stay in cache and can beat it."""
    n = 512 * 2**20
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    r = timeit(lambda: b.copy_(a), device, repeats=10, warmup=3)
    return 2 * n / (r["min"] / 1000.0)


# ----------------------------------------------------------------------------- models
def build_models(small: bool, device: torch.device, dtype: torch.dtype):
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    torch.manual_seed(0)
    tae_cfg = TAEConfig.small() if small else TAEConfig.official()
    t2m_cfg = T2MConfig.small() if small else T2MConfig.official()
    tae = CausalHumanTAE(tae_cfg).eval().to(device, dtype)
    t2m = TextToMotionModel(t2m_cfg).eval().to(device, dtype)
    return tae, t2m


class RandomTextEncoder:
    """Stands in for the sentence encoder: benchmarks time the motion path, the text encoder is timed apart."""

    def __init__(self, dim: int):
        self.dim = dim
        self.cache = {}

    def encode(self, texts):
        out = []
        for t in texts:
            if t not in self.cache:
                g = torch.Generator().manual_seed(abs(hash(t)) % 2**31)
                self.cache[t] = torch.randn(self.dim, generator=g)
            out.append(self.cache[t])
        return torch.stack(out)


class Bundle:
    def __init__(self, tae, t2m, device):
        self.tae, self.t2m = tae, t2m
        self.mean = torch.zeros(272, device=device)
        self.std = torch.ones(272, device=device)
        self.end_latent = torch.full((16,), 1e6, device=device)  # never reached: fixed-length runs


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def weight_read_bytes_per_latent(t2m, steps: int) -> int:
    """Bytes of weights one latent must read at batch 1: the transformer once, the head's per-step
    MLP (input_proj, res-block MLPs, final linear) once per sampling step, and the AdaLN/time/cond
    layers once (their outputs are precomputed for all steps)."""
    head = t2m.diff_loss.net
    per_step = sum(param_bytes(m) for m in [head.input_proj, head.final_layer.linear]) + \
        sum(param_bytes(b.mlp) + param_bytes(b.in_ln) for b in head.res_blocks)
    once = param_bytes(head) - per_step
    trans = param_bytes(t2m) - param_bytes(head)
    return trans + once + per_step * steps


# ----------------------------------------------------------------------------- cases
def case_stream_latency(ctx) -> list[dict]:
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
    from motionstreamer.runtime.reference import reference_stream

    rows = []
    tae, t2m, dev, dtype = ctx["tae"], ctx["t2m"], ctx["device"], ctx["dtype"]
    text = RandomTextEncoder(t2m.config.cond_dim)
    n_lat = ctx["latents"]
    for steps in ctx["steps_list"]:
        config = GenerationConfig(sampling_steps=steps, max_latents=10**6, end_threshold=-1.0)
        # baseline: the original algorithm, fp32, n_lat latents
        ref_t2m, ref_tae = ctx["ref_models"]
        g = torch.Generator().manual_seed(0)

        def run_ref():
            # the original algorithm keeps PyTorch attention (SDPA) whatever the engine's "auto" picks
            saved = [b.attn.attn_backend for b in ref_t2m.transformer.h]
            ref_t2m.set_attention_backend("sdpa")
            try:
                reference_stream(ref_t2m, ref_tae, [(text.encode(["walk"])[0], n_lat)], text.encode([""])[0], g, config)
            finally:
                for b, backend in zip(ref_t2m.transformer.h, saved):
                    b.attn.attn_backend = backend
        base = timeit(run_ref, dev, repeats=ctx["repeats_ref"], warmup=0)
        base_per_latent = per_unit(base, n_lat)

        engine = StreamingEngine(Bundle(tae, t2m, dev), text, capacity=1, config=config, device=dev, dtype=dtype)

        def run_engine():
            sid = engine.add_stream("walk", seed=0, max_latents=n_lat)
            for _ in range(n_lat):
                engine.step()
            engine.close(sid)
        fast = timeit(run_engine, dev, repeats=ctx["repeats"], warmup=1)
        fast_per_latent = per_unit(fast, n_lat)

        # first-frame latency: prompt in -> first 4 frames out (text embedding cached: encoder timed apart)
        def first_frame():
            sid = engine.add_stream("walk", seed=0, max_latents=1)
            engine.step()
            engine.close(sid)
        ff = timeit(first_frame, dev, repeats=ctx["repeats"], warmup=1)
        row = {"case": f"stream_b1_steps{steps}", "latents": n_lat,
               "baseline_ms_per_latent": base_per_latent, "engine_ms_per_latent": fast_per_latent,
               "speedup": base_per_latent["median"] / fast_per_latent["median"],
               "first_frame_ms": ff,
               "realtime_factor": (1000 / LATENTS_PER_SECOND_REALTIME) / fast_per_latent["median"]}
        if ctx["bandwidth"]:
            bound_ms = weight_read_bytes_per_latent(t2m, steps) / ctx["bandwidth"] * 1000
            row["weight_read_bound_ms"] = bound_ms
            row["fraction_of_bound"] = bound_ms / fast_per_latent["median"]
        rows.append(row)
    return rows


def case_throughput(ctx) -> list[dict]:
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine

    rows = []
    tae, t2m, dev, dtype = ctx["tae"], ctx["t2m"], ctx["device"], ctx["dtype"]
    text = RandomTextEncoder(t2m.config.cond_dim)
    steps = ctx["steps_list"][0]
    for batch in ctx["batches"]:
        config = GenerationConfig(sampling_steps=steps, max_latents=10**6, end_threshold=-1.0)
        try:
            engine = StreamingEngine(Bundle(tae, t2m, dev), text, capacity=batch, config=config, device=dev,
                                     dtype=dtype)
            for i in range(batch):
                engine.add_stream(f"prompt {i % 7}", seed=i)
            engine.step()  # prefill all + warm-up
            n = ctx["throughput_latents"]
            r = timeit(lambda: [engine.step() for _ in range(n)], dev, repeats=ctx["repeats"], warmup=0)
        except torch.cuda.OutOfMemoryError:  # pragma: no cover - GPU only
            rows.append({"case": f"throughput_b{batch}", "error": "out of memory"})
            break
        lat_per_s = batch * n / (r["median"] / 1000)
        rows.append({"case": f"throughput_b{batch}_steps{steps}", "streams": batch, "step_ms": per_unit(r, n),
                     "latents_per_s": lat_per_s, "realtime_streams": lat_per_s / LATENTS_PER_SECOND_REALTIME})
    return rows


def student_bundle(ctx, guided: bool = False) -> Bundle:
    """The benchmark's random-weight models with a few-step student (1/2/4 steps) as distillation makes
    it: one that owns its conditional path (the last block, ln_f, out_proj: models/few_step.py) and
    samples from one row, or (guided) one that keeps the teacher's guidance on [cond; uncond] rows."""
    from motionstreamer.models.few_step import StudentHead, StudentHeadConfig

    tae, t2m, dev, dtype = ctx["tae"], ctx["t2m"], ctx["device"], ctx["dtype"]
    head = t2m.config.head
    config = StudentHeadConfig(steps=(1, 2, 4), default_steps=4, top_timestep=head.num_train_steps - 1,
                               condition_blocks=None if guided else 1, cfg_scale=4.0 if guided else 1.0)
    student = StudentHead(head, config, t2m.config).init_from(t2m)
    bundle = Bundle(tae, t2m, dev)
    bundle.student = student.to(dev, dtype).eval()
    bundle.config = {"student_head": student.student_config.to_dict()}
    return bundle


def ort_runtimes(bundle, heads, out_dir) -> dict:
    """{name: backend factory(capacity, config)} for the fp32 and int8 ONNX exports of `bundle` (CPU)."""
    from motionstreamer.export.onnx_export import export_bundle
    from motionstreamer.runtime.ort_backend import OrtBackend

    out = {}
    for name, quantize in (("ort_fp32", None), ("ort_int8", "int8")):
        export_bundle(bundle, f"{out_dir}/{name}", variants=heads, quantize=quantize)
        out[name] = (lambda d: lambda capacity, settings: OrtBackend(
            d, capacity, threads=torch.get_num_threads(), condition_rows=settings.condition_rows,
            head=settings.head))(f"{out_dir}/{name}")
    return out


def case_student(ctx) -> list[dict]:
    """The guided teacher (50 steps, [cond; uncond] rows) against few-step students (models/few_step.py,
    random weights, the teacher's architecture): "student" samples from one row per stream (its own last
    block), "guided" keeps the teacher's guidance on two rows; 1/2/4 steps, at batch 1 and the --batches
    sizes (e.g. --batches 64), in PyTorch and (on the CPU) ONNX Runtime fp32 and int8, in one run: ms per
    latent (one engine step), first-frame latency at batch 1 (prompt in -> 4 frames out, text embedding
    cached), and the weight-read bound (measured copy bandwidth)."""
    import tempfile

    from motionstreamer.checkpoints import bundle_config_of
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine, resolve_config

    t2m, dev, dtype = ctx["t2m"], ctx["device"], ctx["dtype"]
    bundles = {"student": student_bundle(ctx), "guided": student_bundle(ctx, guided=True)}
    text = RandomTextEncoder(t2m.config.cond_dim)
    # (label, which bundle, head, steps); the teacher runs from the one-row student's bundle
    variants = [("teacher", "student", "teacher", 4), ("student", "student", "student", 1),
                ("guided", "guided", "student", 4)] if ctx["quick"] else \
        [("teacher", "student", "teacher", 50)] + [(kind, kind, "student", k) for kind in ("student", "guided")
                                                   for k in (1, 2, 4)]
    if ctx["student_variants"]:   # e.g. teacher50,guided4: an official-size run on a small CPU
        wanted = ctx["student_variants"]
        variants = [v for v in variants if f"{v[0]}{v[3]}" in wanted]
        unknown = sorted(set(wanted) - {f"{v[0]}{v[3]}" for v in variants})
        if unknown:
            raise SystemExit(f"--student-variants: unknown {unknown}; known: teacher50, student1/2/4, guided1/2/4")
        bundles = {name: b for name, b in bundles.items() if any(v[1] == name for v in variants)}
    rows, n = [], ctx["throughput_latents"]
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = {"torch": {name: None for name in bundles}}
        if dev.type == "cpu" and ctx["onnx"]:
            for name, b in bundles.items():
                heads = [("ddpm", k) if head == "teacher" else ("student", k)
                         for _, which, head, k in variants if which == name]
                for rt, factory in ort_runtimes(b, heads, f"{tmp}/{name}").items():
                    runtimes.setdefault(rt, {})[name] = factory
        for batch in sorted({1, *ctx["batches"]}):
            for runtime, factories in runtimes.items():
                for label, which, head, steps in variants:
                    bundle = bundles[which]
                    config = GenerationConfig(head=head, sampling_steps=steps, max_latents=10**6, end_threshold=-1.0)
                    settings = resolve_config(config, bundle_config_of(bundle)).sampler_settings()
                    factory = factories[which]
                    backend = None if factory is None else factory(batch, settings)
                    engine = StreamingEngine(bundle, text, capacity=batch, config=config, device=dev, dtype=dtype,
                                             backend=backend)
                    for i in range(batch):
                        engine.add_stream(f"prompt {i % 7}", seed=i)
                    engine.step()  # prefill all + warm-up
                    r = per_unit(timeit(lambda: [engine.step() for _ in range(n)], dev, repeats=ctx["repeats"],
                                        warmup=0), n)
                    row = {"case": f"student_b{batch}_{runtime}_{label}{steps}", "streams": batch,
                           "runtime": runtime, "kv_rows_per_stream": engine.rows, "ms_per_latent": r,
                           "latents_per_s": batch * 1000 / r["median"],
                           "realtime_factor": (1000 / LATENTS_PER_SECOND_REALTIME) / r["median"]}
                    if batch == 1:
                        for sid in list(engine.streams):
                            engine.close(sid)

                        def first_frame():
                            sid = engine.add_stream("walk", seed=0, max_latents=1)
                            engine.step()
                            engine.close(sid)
                        row["first_frame_ms"] = timeit(first_frame, dev, repeats=ctx["repeats"], warmup=1)
                        if ctx["bandwidth"] and runtime == "torch":   # the student has the teacher's architecture
                            bound = weight_read_bytes_per_latent(t2m, steps) / ctx["bandwidth"]
                            row["weight_read_bound_ms"] = bound * 1000
                    rows.append(row)
    by = {r["case"]: r["ms_per_latent"]["median"] for r in rows}
    for r in rows:   # the teacher at 50 steps over this row, same batch and runtime, same run
        base = by.get(f"student_b{r['streams']}_{r['runtime']}_teacher50")
        if base is not None:
            r["speedup_vs_teacher50"] = base / r["ms_per_latent"]["median"]
    return rows


def case_embedded(ctx) -> list[dict]:
    """The embedded default model as `motionstreamer generate/stream` runs it: its own weights, the
    MiniLM text encoder, end detection off (fixed-length runs): the teacher at each --steps count and
    the bundle's default head (its distilled student at its default count), in PyTorch and (on the CPU)
    through its fp32 and int8 ONNX exports (`generate --onnx DIR`), in one run.
    first_frame_ms: a new prompt typed -> its first 4 frames out, text encoding included."""
    import tempfile

    from motionstreamer.checkpoints import bundle_config_of
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine, resolve_config
    from motionstreamer.runtime.loading import load_models

    dev = ctx["device"]
    bundle, text, _ = load_models(None, device=str(dev), dtype="fp32")
    rows = []
    n_lat = ctx["latents"] * 2
    heads = [("teacher", steps) for steps in ctx["steps_list"]] + [(None, None)]   # None: the bundle's default
    with tempfile.TemporaryDirectory() as tmp:
        runtimes = {"torch": None}
        if dev.type == "cpu" and ctx["onnx"]:   # the same model through `generate --onnx DIR` (fp32 and int8)
            student_steps = [("student", k) for k in bundle.student.student_config.steps]
            runtimes.update(ort_runtimes(bundle, [("ddpm", k) for k in ctx["steps_list"]] + student_steps, tmp))
        for runtime, factory in runtimes.items():
            for head, steps in heads:
                config = GenerationConfig(head=head, sampling_steps=steps, max_latents=10**6, end_threshold=-1.0)
                settings = resolve_config(config, bundle_config_of(bundle)).sampler_settings()
                engine = StreamingEngine(bundle, text, capacity=1, config=config, device=dev,
                                         backend=None if factory is None else factory(1, settings))
                prompts = iter(f"a person walks forward and waves {i}" for i in range(10**6))  # uncached text

                def run_stream():
                    sid = engine.add_stream("a person jogs forward", seed=0, max_latents=n_lat)
                    for _ in range(n_lat):
                        engine.step()
                    engine.close(sid)

                def first_frame():
                    sid = engine.add_stream(next(prompts), seed=0, max_latents=1)
                    engine.step()
                    engine.close(sid)
                per = timeit(run_stream, dev, repeats=ctx["repeats"], warmup=1)
                per = per_unit(per, n_lat)
                ff = timeit(first_frame, dev, repeats=max(3, ctx["repeats"]), warmup=1)
                s = engine.settings
                name = (f"embedded_model_steps{s.sampling_steps}" if head == "teacher"
                        else f"embedded_model_default_{s.head}{s.sampling_steps}")
                rows.append({"case": name if runtime == "torch" else f"{name}_{runtime}", "runtime": runtime,
                             "head": s.head, "sampling_steps": s.sampling_steps, "kv_rows_per_stream": engine.rows,
                             "latents": n_lat, "engine_ms_per_latent": per, "first_frame_ms": ff,
                             "realtime_factor": (1000 / LATENTS_PER_SECOND_REALTIME) / per["median"]})
    teacher50 = {r["runtime"]: r["engine_ms_per_latent"]["median"] for r in rows
                 if r["head"] == "teacher" and r["sampling_steps"] == 50}
    for r in rows:   # against the original 50-step teacher, same run: in the same runtime, and in PyTorch
        if r["runtime"] in teacher50:
            r["speedup_vs_teacher50"] = teacher50[r["runtime"]] / r["engine_ms_per_latent"]["median"]
        if "torch" in teacher50:
            r["speedup_vs_torch_teacher50"] = teacher50["torch"] / r["engine_ms_per_latent"]["median"]
    return rows


def case_goals(ctx) -> list[dict]:
    """Per-latent cost of a stream with a goal against the same stream without (docs/goals.md: the goal
    is steered by a root-motion warp every latent, and a goal-trained model adds one small MLP per
    latent), on a goal model of the run's size (random weights: the cost does not depend on them) and
    on the embedded model (steered only). The two are timed alternately in one run (rounds of
    `repeats` each), so the ratio sees the same machine state; the goal is far away and never reached,
    so both run the same number of latents."""
    import dataclasses

    from motionstreamer.models.transformer import TextToMotionModel
    from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
    from motionstreamer.runtime.loading import load_models

    dev, dtype = ctx["device"], ctx["dtype"]
    torch.manual_seed(0)
    goal_t2m = TextToMotionModel(dataclasses.replace(ctx["t2m"].config, goal=True)).eval().to(dev, dtype)
    models = [("random_goal_model", Bundle(ctx["tae"], goal_t2m, dev), RandomTextEncoder(goal_t2m.config.cond_dim))]
    embedded, text, _ = load_models(None, device=str(dev), dtype="fp32")
    models.append(("embedded_model", embedded, text))
    n_lat, rows = ctx["latents"] * 2, []
    for name, bundle, text in models:
        for steps in ctx["steps_list"]:
            # the teacher at each step count (the embedded model's default head is its 4-step student)
            cfg = GenerationConfig(head="teacher", sampling_steps=steps, max_latents=10**6, end_threshold=-1.0,
                                   goal_tolerance=0.0)
            engine = StreamingEngine(bundle, text, capacity=1, config=cfg, device=dev)

            def run(goal: bool):
                sid = engine.add_stream("a person walks forward", seed=0, max_latents=n_lat)
                if goal:
                    engine.set_goal(sid, 40.0, 60.0, heading=1.0, seconds=120.0)
                for _ in range(n_lat):
                    engine.step()
                engine.close(sid)
            times = {False: [], True: []}
            for _ in range(max(2, ctx["repeats"])):
                for goal in (False, True):
                    times[goal].append(per_unit(timeit(lambda: run(goal), dev, repeats=1, warmup=1), n_lat)["median"])
            med = {g: sorted(v)[len(v) // 2] for g, v in times.items()}
            rows.append({"case": f"goals_{name}_steps{steps}", "latents": n_lat, "ms_per_latent_text_only": med[False],
                         "ms_per_latent_with_goal": med[True], "goal_cost_ratio": med[True] / med[False],
                         "rounds": len(times[True])})
    return rows


EXTERNAL_MODULES = ("bench_causal_conv", "bench_kernels", "bench_onnx", "bench_train", "bench_serve")


def case_external(ctx) -> list[dict]:
    """Cases contributed by other modules (kernels, causal conv, ONNX, training) when present."""
    rows = []
    for mod_name in ctx["external"]:
        fn_name = "run_all"
        try:
            mod = __import__(mod_name)
        except ImportError:
            continue
        fn = getattr(mod, fn_name, None)
        if fn is None:
            continue
        try:
            out = fn(device=ctx["device"], small=ctx["small"], quick=ctx["quick"])
        except Exception as e:  # a broken contributed case is reported, not fatal
            out = [{"case": mod_name, "error": f"{type(e).__name__}: {e}"}]
        rows.extend(out if isinstance(out, list) else [out])
    return rows


# ----------------------------------------------------------------------------- output
def fmt(v) -> str:
    if isinstance(v, dict) and "median" in v:
        return f"{v['median']:.3f}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    keys = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="small model config (quick CPU runs)")
    ap.add_argument("--quick", action="store_true", help="CI smoke run: small config, few latents, one repeat")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="fp32|bf16|fp16|auto (bf16 on GPU)")
    ap.add_argument("--cases", default="stream,throughput,external",
                    help="comma list of stream, throughput, external, embedded (the shipped default model), "
                         "student (guided teacher vs few-step student), goals (a stream with vs without a goal)")
    ap.add_argument("--batches", default=None, help="comma list of concurrent streams (default 64,512)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-onnx", action="store_true", help="the student case without ONNX Runtime")
    ap.add_argument("--student-variants", default=None, metavar="LIST",
                    help="the student case's rows to run, e.g. teacher50,guided4 (default: the teacher at 50 steps and "
                         "both student kinds at 1, 2 and 4 steps)")
    ap.add_argument("--external", default=",".join(EXTERNAL_MODULES),
                    help="comma list of contributed benchmark modules the 'external' case runs")
    args = ap.parse_args(argv)

    from motionstreamer.runtime.loading import resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    small = args.small or args.quick
    tae, t2m = build_models(small, device, dtype)
    ref_models = build_models(small, device, torch.float32) if dtype != torch.float32 else (tae, t2m)
    ref_tae, ref_t2m = ref_models
    if args.quick:
        latents, steps_list, repeats, batches, tl = 3, [4], 1, [4], 2
    elif device.type == "cuda":
        latents, steps_list, repeats, batches, tl = 20, [50, 10], 5, [64, 512], 5
    else:
        latents, steps_list, repeats, batches, tl = (10, [50, 10], 3, [8, 64], 3) if small else (6, [50, 10], 2, [8], 2)
    external = [m.strip() for m in args.external.split(",") if m.strip()]
    unknown = sorted(set(external) - set(EXTERNAL_MODULES))
    if unknown:
        ap.error(f"unknown --external module(s) {unknown}; choose from {list(EXTERNAL_MODULES)}")
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    ctx = dict(tae=tae, t2m=t2m, ref_models=(ref_t2m, ref_tae), device=device, dtype=dtype, small=small,
               quick=args.quick, latents=latents, steps_list=steps_list, repeats=repeats,
               repeats_ref=1 if args.quick else max(1, repeats // 2), batches=batches, throughput_latents=tl,
               bandwidth=None if args.quick else measure_bandwidth(device), external=external,
               onnx=not args.no_onnx and importlib.util.find_spec("onnxruntime") is not None,
               student_variants=[v.strip() for v in args.student_variants.split(",") if v.strip()]
               if args.student_variants else None)
    info = device_info(device)
    info.update(config="small" if small else "official", dtype=str(dtype).replace("torch.", ""),
                bandwidth_gbps=(ctx["bandwidth"] / 1e9) if ctx["bandwidth"] else None)
    rows = []
    for case in args.cases.split(","):
        fn = {"stream": case_stream_latency, "throughput": case_throughput, "external": case_external,
              "embedded": case_embedded, "student": case_student, "goals": case_goals}.get(case)
        if fn is None:
            ap.error(f"unknown case {case!r}")
        print(f"[bench] {case} ...", file=sys.stderr, flush=True)
        rows.extend(fn(ctx))
    table = markdown_table(rows)
    print(json.dumps(info, indent=1))
    print(table)
    if not args.no_write:
        tag = "quick" if args.quick else ("small" if small else "official")
        if args.cases != ap.get_default("cases") or len(external) < len(EXTERNAL_MODULES):
            parts = [c if c != "external" else "-".join(m.removeprefix("bench_") for m in external)
                     for c in args.cases.split(",")]
            tag += "_" + "-".join(parts)
        write_results(args.out, info, rows, tag, f"({tag}, {info['dtype']})")
    return 0


def write_results(out_dir, info: dict, rows: list[dict], tag: str, title: str, preamble: str = "") -> Path:
    """benchmarks/results/<device>_<tag>_<date>.json and .md (the table); returns the path stem."""
    from motionstreamer.utils import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in info["name"]).strip("-").lower()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out / f"{slug}_{tag}_{stamp}"
    atomic_write_json(f"{base}.json", {"info": info, "results": rows})
    atomic_write_text(f"{base}.md", f"# {info['name']} {title} {stamp}\n\n{preamble}{markdown_table(rows)}\n")
    print(f"wrote {base}.json and {base}.md", file=sys.stderr)
    return base


if __name__ == "__main__":
    sys.exit(main())
