"""ONNX Runtime engine vs the PyTorch engine, per latent (same weights, same session logic), and the
int8 export (`quantize="int8"`: int8 MatMul weights in the transformer and head) beside the fp32 one;
the guided teacher head and a few-step student head (models/few_step.py, random weights: one
condition row per stream, 1/2/4 steps).

Small config always; the official size with 50 and 10 sampling steps unless quick/small. CPU here;
on a GPU box the ORT CUDA provider is used when onnxruntime-gpu is installed.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch


class _Enc:
    def __init__(self, dim):
        self.dim = dim

    def encode(self, texts):
        return torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(len(t))) for t in texts])


def _per_latent_ms(session_factory, n_latents: int, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        s = session_factory()
        s.push_text("walk forward", max_latents=n_latents)
        s.step()  # prefill + first latent outside the timed window
        t = time.perf_counter()
        for _ in range(n_latents - 1):
            s.step()
        times.append((time.perf_counter() - t) * 1000 / (n_latents - 1))
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "repeats": repeats, "unit": "ms"}


def run_all(device, small: bool, quick: bool) -> list[dict]:
    from motionstreamer.checkpoints import add_student_head, load_bundle, save_bundle
    from motionstreamer.export.onnx_export import export_bundle
    from motionstreamer.models.few_step import StudentHead, StudentHeadConfig
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
    from motionstreamer.runtime.engine import GenerationConfig
    from motionstreamer.runtime.ort_backend import ort_session
    from motionstreamer.runtime.session import StreamingSession

    if device.type != "cpu":
        return [{"case": "onnx", "skipped": "ONNX benchmark runs on the CPU provider (see docstring)"}]
    configs = [("small", TAEConfig.small(), T2MConfig.small())]
    if not (quick or small):
        configs.append(("official", TAEConfig.official(), T2MConfig.official()))
    rows = []
    for name, tcfg, mcfg in configs:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            tae, t2m = CausalHumanTAE(tcfg), TextToMotionModel(mcfg)
            save_bundle(f"{tmp}/b", tae, t2m, torch.zeros(272), torch.ones(272), torch.full((16,), 1e6))
            student_steps = (1,) if quick else (1, 2, 4)
            student = StudentHead(mcfg.head, StudentHeadConfig(steps=student_steps, default_steps=student_steps[-1],
                                                               top_timestep=mcfg.head.num_train_steps - 1))
            student.net.load_state_dict(t2m.diff_loss.net.state_dict())
            add_student_head(f"{tmp}/b", student)
            bundle = load_bundle(f"{tmp}/b")
            steps_list = [4] if quick else [50, 10]
            heads = [("ddpm", s) for s in steps_list] + [("student", k) for k in student_steps]
            export_bundle(bundle, f"{tmp}/onnx", variants=heads)
            export_bundle(bundle, f"{tmp}/onnx_int8", variants=heads, quantize="int8")
            enc = _Enc(mcfg.cond_dim)
            n = 3 if quick else 8
            for sampler, steps in heads:
                head = "student" if sampler == "student" else "teacher"
                config = GenerationConfig(sampling_steps=steps, end_threshold=-1.0, head=head)
                what = f"student{steps}" if head == "student" else f"steps{steps}"
                torch_ms = _per_latent_ms(lambda: StreamingSession(bundle, enc, config=config, seed=0), n,
                                          1 if quick else 2)
                ort_ms, int8_ms = (_per_latent_ms(lambda: ort_session(f"{tmp}/{d}", enc, config=config, seed=0), n,
                                                  1 if quick else 2) for d in ("onnx", "onnx_int8"))
                rows.append({"case": f"onnx_{name}_{what}", "torch_eager_ms_per_latent": torch_ms,
                             "ort_ms_per_latent": ort_ms, "ort_speedup": torch_ms["median"] / ort_ms["median"],
                             "ort_realtime": ort_ms["median"] < 1000 * 4 / 30})
                rows.append({"case": f"onnx_int8_{name}_{what}", "ort_int8_ms_per_latent": int8_ms,
                             "int8_speedup_vs_ort_fp32": ort_ms["median"] / int8_ms["median"],
                             "int8_speedup_vs_torch_eager": torch_ms["median"] / int8_ms["median"],
                             "ort_realtime": int8_ms["median"] < 1000 * 4 / 30})
    return rows
