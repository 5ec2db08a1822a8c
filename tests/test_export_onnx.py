"""ONNX export: every graph passes onnx.checker and matches its PyTorch module (fp32); a short stream
through the onnxruntime engine matches the PyTorch session with the same noise."""
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fakes import FakeTextEncoder

from motionstreamer.checkpoints import load_bundle, save_bundle
from motionstreamer.export.onnx_export import WEIGHT_QMAX, _gemm_to_matmul, export_bundle, read_manifest
from motionstreamer.models.sampling import SamplerSettings, draw_sampling_noise
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.runtime.engine import GenerationConfig
from motionstreamer.runtime.ort_backend import ort_session
from motionstreamer.runtime.session import StreamingSession

# fp32 graph vs module: reassociated sums in ORT's fused kernels; relative to the output scale
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    tae = CausalHumanTAE(TAEConfig(hidden=32, width=32))
    config = T2MConfig.small()
    config.block_size = 10
    t2m = TextToMotionModel(config)
    for p in t2m.diff_loss.net.parameters():   # the zero-initialised head would hide errors
        torch.nn.init.normal_(p, std=0.02)
    d = tmp_path_factory.mktemp("bundle")
    g = torch.Generator().manual_seed(1)
    save_bundle(d, tae, t2m, torch.randn(272, generator=g) * 0.1, torch.rand(272, generator=g) + 0.5,
                torch.randn(16, generator=g))
    bundle = load_bundle(d)
    out = tmp_path_factory.mktemp("onnx")
    export_bundle(bundle, out, variants=(("ddpm", 50), ("ddim", 5)))
    return bundle, out


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def close(a, b):
    a, b = np.asarray(a), np.asarray(b.detach() if hasattr(b, "detach") else b)
    scale = max(np.abs(b).max(), 1e-6)
    assert np.abs(a - b).max() / scale < REL_TOL, (np.abs(a - b).max(), scale)


def test_graphs_pass_checker(exported):
    _, out = exported
    for f in out.glob("*.onnx"):
        onnx.checker.check_model(onnx.load(str(f)))


def test_prefill_and_decode_match_kv_cache_model(exported):
    bundle, out = exported
    m = bundle.t2m
    g = torch.Generator().manual_seed(2)
    text = torch.randn(3, m.config.cond_dim, generator=g)
    lat = torch.randn(3, 4, 16, generator=g)
    cache = m.new_kv_cache(3)
    ref = m.prefill(text, lat, cache)
    pad = torch.zeros(3, m.config.block_size - 1, 16)
    pad[:, :4] = lat
    cond, k, v = run(out / "prefill.onnx", {"text": text.numpy(), "latents": pad.numpy(), "n_latents": np.full(3, 4)})
    close(cond, ref)
    close(k[:, :, :, :5], torch.stack(cache.k)[:, :, :, :5])
    z = torch.randn(3, 16, generator=g)
    ref2 = m.decode_step(z, cache)
    cond2, k2, _ = run(out / "decode_step.onnx", {"latent": z.numpy(), "k_cache": k, "v_cache": v,
                                                  "pos": np.full(3, 5)})
    close(cond2, ref2)
    close(k2[:, :, :, :6], torch.stack(cache.k)[:, :, :, :6])


@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("ddim", 5)])
def test_head_graph_matches_sampler(exported, sampler, steps):
    bundle, out = exported
    g = torch.Generator().manual_seed(3)
    E = bundle.t2m.config.n_embd
    cond, unc = torch.randn(2, E, generator=g), torch.randn(2, E, generator=g)
    x, n = draw_sampling_noise(g, 2, steps, 16)
    ref = bundle.t2m.diff_loss.sample(cond, unc, SamplerSettings(cfg_scale=3.0, temperature=0.9, sampling_steps=steps,
                                                                 sampler=sampler), noise=(x, n))
    sess = ort.InferenceSession(str(out / f"head_{sampler}{steps}.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"cond": cond.numpy(), "uncond": unc.numpy(), "x_T": x.numpy(), "step_noise": n.numpy(),
             "cfg_scale": np.array([3.0], np.float32), "temperature": np.array([0.9], np.float32)}
    names = {i.name for i in sess.get_inputs()}
    close(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0], ref)


def test_tae_step_graph_matches_streaming_decoder(exported):
    bundle, out = exported
    tae = bundle.tae
    z = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(4))
    st = tae.init_decode_state(2)
    states = [b.numpy().copy() for b in st.buffers]
    frames = []
    for i in range(3):
        res = run(out / "tae_decode_step.onnx", {"z": z[:, i].numpy(),
                                                 **{f"state_{j}": s for j, s in enumerate(states)}})
        frames.append(res[0])
        states = res[1:]
    close(np.concatenate(frames, 1), tae.decode(z))


def test_ort_stream_matches_torch_session(exported):
    bundle, out = exported
    config = GenerationConfig(sampling_steps=50, end_threshold=-1.0, max_latents=14, cfg_scale=2.5)
    a = StreamingSession(bundle, FakeTextEncoder(384), config=config, seed=7)
    b = ort_session(out, FakeTextEncoder(384), config=config, seed=7)
    conditions = [[], []]
    for s, conds in zip((a, b), conditions):
        s.push_text("walk forward", max_latents=6)
        s.push_text("turn left", after_current=True)   # crosses the 9-latent window: re-prefill
        # the prefill and decode conditions, compared directly: this small model's latents hardly depend on them
        for name in ("prefill", "decode"):
            call = getattr(s.engine.backend, name)
            setattr(s.engine.backend, name, lambda *x, call=call, conds=conds: conds.append(call(*x)) or conds[-1])
    ca, cb = list(a), list(b)
    assert len(ca) == len(cb) == 14
    assert len(conditions[1]) == len(conditions[0]) > 14   # a decode per latent, and the prefills
    for o, t in zip(*conditions[::-1]):
        close(o, t)
    close(torch.stack([c.latent for c in cb]), torch.stack([c.latent for c in ca]))
    close(torch.cat([c.joints for c in cb]), torch.cat([c.joints for c in ca]))


def test_ort_engine_matches_torch_as_streams_come_and_go(exported):
    """Two slots, the streams joining and leaving at different steps: the onnxruntime engine steps some
    slots (cache rows gathered and scattered) and all of them (the cache arrays replaced whole) and gives
    the PyTorch engine's latents and joints, stream by stream, throughout; a stream that takes a freed slot
    after a full step starts from zero states."""
    from motionstreamer.runtime.engine import StreamingEngine
    from motionstreamer.runtime.ort_backend import load_ort

    bundle, out = exported
    config = GenerationConfig(sampling_steps=50, end_threshold=-1.0, cfg_scale=2.5)
    _, backend = load_ort(out, capacity=2, config=config)
    engines = [StreamingEngine(bundle, FakeTextEncoder(384), capacity=2, config=config),
               StreamingEngine(bundle, FakeTextEncoder(384), capacity=2, config=config, backend=backend)]
    got, conditions = [{}, {}], [[], []]
    for engine, chunks, conds in zip(engines, got, conditions):
        # the decode step's conditions, compared directly: this small model's latents hardly depend on them
        decode = engine.backend.decode
        engine.backend.decode = lambda *a, decode=decode, conds=conds: conds.append(decode(*a)) or conds[-1]
        a = engine.add_stream("walk forward", seed=1, max_latents=12)
        steps = [engine.step() for _ in range(2)]                 # one stream of two slots: partial
        b = engine.add_stream("wave", seed=2, max_latents=5)
        steps += [engine.step() for _ in range(4)]                # both: full
        engine.close(a)
        steps += [engine.step() for _ in range(1)]                # partial again
        c = engine.add_stream("jump", seed=3, max_latents=3)      # the freed slot, after full steps
        steps += [engine.step() for _ in range(3)]
        names = {a: "a", b: "b", c: "c"}
        for step in steps:
            for ch in step:
                chunks.setdefault(names[ch.stream_id], []).append(ch)
    assert {k: len(v) for k, v in got[1].items()} == {"a": 6, "b": 5, "c": 3}
    assert [c.shape[0] for c in conditions[1]] == [1, 1, 2, 2, 2, 2, 1, 1, 1, 1]
    for o, t in zip(*conditions[::-1]):
        close(o, t)
    for name in "abc":
        t, o = got[0][name], got[1][name]
        assert [ch.latent_index for ch in o] == [ch.latent_index for ch in t]
        close(torch.stack([ch.latent for ch in o]), torch.stack([ch.latent for ch in t]))
        close(torch.cat([ch.joints for ch in o]), torch.cat([ch.joints for ch in t]))


def test_engine_sessions_do_not_spin(exported):
    """The engine runs its 3-5 sessions in turn: each session's workers must sleep between calls instead of
    spin-waiting (ORT's default), which took the cores from the next session (2-core machine: the embedded
    student's latent 12.9 ms spinning vs 4.5 ms not). The thread count asked for is the one set."""
    from motionstreamer.runtime.ort_backend import OrtBackend
    backend = OrtBackend(exported[1], threads=2)
    sessions = [backend.prefill_s, backend.decode_s, backend.tae_s] + [s for s, _ in backend.heads.values()]
    for sess in sessions:
        opts = sess.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == 2


def test_missing_head_variant_is_a_clear_error(exported):
    bundle, out = exported
    with pytest.raises(ValueError, match="no exported head"):   # when the session is made, before any step
        ort_session(out, FakeTextEncoder(384), config=GenerationConfig(sampling_steps=20, end_threshold=-1.0), seed=0)


# ---------------------------------------------------------------- int8 (export_bundle(quantize="int8"))
# What int8 guarantees, tested below on every quantized MatMul of the three graphs: activations
# rounded to a uint8 grid of step s_x = (max(x, 0) - min(x, 0)) / 255 per call, weights to an int8
# grid of step s_w = max|w| / WEIGHT_QMAX per output channel, integer products exact (no saturation:
# test_int8_weights_cannot_saturate...), so |x^ w^ - x w| <= s_x/2 sum|w^| + s_w/2 sum|x| + K s_x s_w / 4
# per output. Those per-call errors compound through the layers and the autoregressive stream; the
# end-to-end bounds below guard this module's model against regressions. Measured with 7-bit weights
# (full-range 8-bit weights on a VNNI CPU in brackets; the weight grid step doubled): prefill cond
# 0.031 (0.027), decode cond 0.018 (0.011) of the output scale; stream latents 0.011 (0.0054) worst
# per-latent relative norm; the head's error 0.20 (0.16) of the change a different cond makes. They
# hold on every x86 CPU alike: the int8 outputs are bit-identical with and without VNNI
# (test_int8_graphs_identical_on_an_avx2_cpu).
INT8_COND_TOL = 0.06
INT8_STREAM_TOL = 0.03
INT8_HEAD_VS_COND_EFFECT = 0.35


@pytest.fixture(scope="module")
def exported_int8(exported, tmp_path_factory):
    bundle, _ = exported
    out = tmp_path_factory.mktemp("onnx_int8")
    return export_bundle(bundle, out, variants=(("ddim", 5),), quantize="int8"), out


def rel_max(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_int8_graphs_pass_checker_and_hold_int8_weights(exported_int8):
    manifest, out = exported_int8
    q = manifest["quantization"]
    assert q["weights"] == "int8" and q["weight_type"] == "QInt8"
    assert set(q["files"]) == {"prefill.onnx", "decode_step.onnx", "head_ddim5.onnx"}
    assert q["fp32_files"] == ["tae_decode_step.onnx"]
    assert read_manifest(out)["quantization"] == q
    for f in out.glob("*.onnx"):
        model = onnx.load(str(f))
        onnx.checker.check_model(model)
        ops = {n.op_type for n in model.graph.node}
        int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        if f.name in q["files"]:
            assert (int8_weights and "Gemm" not in ops
                    and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}), (f.name, ops)
        else:
            assert not int8_weights


def int8_weights(model):
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.INT8}


def test_int8_weights_cannot_saturate_non_vnni_kernels(exported_int8):
    # x86 without VNNI (AVX2, AVX-512F/BW) multiplies uint8 activations by int8 weights with
    # VPMADDUBSW: two adjacent products summed in int16 with saturation. |w| <= 64 keeps that sum
    # within 2 * 255 * 64 = 32640 < 32767, so every x86 CPU computes the same exact integers.
    manifest, out = exported_int8
    assert manifest["quantization"]["weight_range"] == [-WEIGHT_QMAX, WEIGHT_QMAX]
    assert 2 * 255 * WEIGHT_QMAX <= 2 ** 15 - 1
    for f in manifest["quantization"]["files"]:
        weights = int8_weights(onnx.load(str(out / f)))
        assert weights, f
        for name, w in weights.items():
            assert np.abs(w.astype(np.int32)).max() <= WEIGHT_QMAX, (f, name, int(np.abs(w).max()))


def quantized_matmuls(model):
    """(fp32 input x, weight base name, fp32 output y) of every MatMulInteger: x feeds the
    DynamicQuantizeLinear of its activations, y is the Mul that rescales its int32 result."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMulInteger":
            continue
        x = producer[n.input[0]].input[0]
        cast = consumers[n.output[0]][0]
        y = consumers[cast.output[0]][0].output[0]
        out.append((x, n.input[1][:-len("_quantized")], y))
    return out


@pytest.mark.parametrize("graph", ["prefill.onnx", "decode_step.onnx", "head_ddim5.onnx"])
def test_int8_matmuls_within_their_rounding_bound(exported, exported_int8, graph):
    """Each quantized MatMul, fed its own fp32 input inside the int8 graph, stays within the bound
    its quantization grids guarantee (module comment) against the fp32 weights."""
    (_, out32), (_, out8) = exported, exported_int8
    q = onnx.load(str(out8 / graph))
    fp32_weights = {i.name: onnx.numpy_helper.to_array(i)
                    for i in _gemm_to_matmul(onnx.load(str(out32 / graph))).graph.initializer}
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    q_weights = int8_weights(q)
    mms = quantized_matmuls(q)
    assert len(mms) >= 20
    names = [n for x, _, y in mms for n in (x, y)]
    del q.graph.output[:]
    q.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names))
    g = torch.Generator().manual_seed(5)
    feeds = {
        "prefill.onnx": lambda: {"text": torch.randn(3, 384, generator=g).numpy(),
                                 "latents": torch.randn(3, 9, 16, generator=g).numpy(), "n_latents": np.full(3, 4)},
        "decode_step.onnx": lambda: {"latent": torch.randn(3, 16, generator=g).numpy(),
                                     "k_cache": torch.randn(4, 3, 4, 10, 32, generator=g).numpy(),
                                     "v_cache": torch.randn(4, 3, 4, 10, 32, generator=g).numpy(),
                                     "pos": np.full(3, 5)},
        "head_ddim5.onnx": lambda: {"cond": torch.randn(3, 128, generator=g).numpy(),
                                    "uncond": torch.randn(3, 128, generator=g).numpy(),
                                    "x_T": torch.randn(3, 16, generator=g).numpy(),
                                    "cfg_scale": np.array([3.0], np.float32)},
    }[graph]()
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    worst = 0.0
    for x_name, w_name, y_name in mms:
        w = fp32_weights[w_name].astype(np.float64)                     # (K, N)
        s_w = scales[w_name + "_scale"].astype(np.float64)              # (N,) or ()
        assert not scales[w_name + "_zero_point"].any()                  # symmetric weights
        w_hat = q_weights[w_name + "_quantized"].astype(np.float64) * s_w
        x = values[x_name].astype(np.float64).reshape(-1, w.shape[0])
        y = values[y_name].astype(np.float64).reshape(-1, w.shape[1])
        s_x = (max(x.max(), 0.0) - min(x.min(), 0.0)) / 255
        bound = (s_x / 2 * np.abs(w_hat).sum(0) + np.outer(np.abs(x).sum(1), s_w / 2)
                 + w.shape[0] * s_x * s_w / 4)
        slack = 1e-5 * (np.abs(x) @ np.abs(w)) + 1e-6                    # fp32 scaling and accumulation
        err = np.abs(y - x @ w)
        assert (err <= bound + slack).all(), (graph, w_name, float((err / (bound + slack)).max()))
        worst = max(worst, float((err / bound).max()))
    assert worst > 0.05   # the bound is within a small factor of the real error, not vacuous


QEMU = shutil.which("qemu-x86_64")
RUN_GRAPHS = """
import sys, numpy as np, onnxruntime as ort
feeds = np.load(sys.argv[1])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
out = {}
for f in sys.argv[3:]:
    sess = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out[f] = sess.run(None, {n: feeds[n] for n in names})[0]
np.savez(sys.argv[2], *[out[f] for f in sys.argv[3:]])
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
def test_int8_graphs_identical_on_an_avx2_cpu(exported_int8, tmp_path):
    """The int8 graphs run under qemu's Haswell model (AVX2, no AVX-512, no VNNI: onnxruntime then
    takes its VPMADDUBSW kernels) give the same bits as on this CPU. Full-range int8 weights gave
    0.13 instead of 0.017 prefill error there: saturation."""
    if QEMU is None:      # a failure, not a skip, wherever it is installable (as in CI)
        pytest.fail("qemu-x86_64 is missing: scripts/test.sh installs Debian's `qemu-user`")
    _, out8 = exported_int8
    g = torch.Generator().manual_seed(6)
    feeds = {"text": torch.randn(3, 384, generator=g) * 3, "latents": torch.randn(3, 9, 16, generator=g) * 3,
             "n_latents": np.full(3, 4), "latent": torch.randn(3, 16, generator=g) * 3,
             "k_cache": torch.randn(4, 3, 4, 10, 32, generator=g), "v_cache": torch.randn(4, 3, 4, 10, 32, generator=g),
             "pos": np.full(3, 5), "cond": torch.randn(3, 128, generator=g) * 3,
             "uncond": torch.randn(3, 128, generator=g) * 3, "x_T": torch.randn(3, 16, generator=g),
             "cfg_scale": np.array([3.0], np.float32)}
    np.savez(tmp_path / "feeds.npz", **{k: np.asarray(v) for k, v in feeds.items()})
    graphs = [str(out8 / f) for f in ("prefill.onnx", "decode_step.onnx", "head_ddim5.onnx")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    results = []
    for prefix, name in (([], "native"), ([QEMU, "-cpu", "Haswell"], "haswell")):
        cmd = prefix + [os.path.realpath(sys.executable), "-c", RUN_GRAPHS, str(tmp_path / "feeds.npz"),
                        str(tmp_path / f"{name}.npz"), *graphs]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        results.append(np.load(tmp_path / f"{name}.npz"))
    for i, f in enumerate(graphs):
        a, b = results[0][f"arr_{i}"], results[1][f"arr_{i}"]
        assert np.isfinite(a).all() and np.abs(a).max() > 0
        assert np.array_equal(a, b), (f, float(np.abs(a - b).max()))


def test_fp32_manifest_has_no_quantization(exported):
    assert read_manifest(exported[1])["quantization"] is None


def test_int8_files_are_smaller(exported, exported_int8):
    (_, out32), (q, out8) = exported, exported_int8
    for f in q["quantization"]["files"]:
        assert (out8 / f).stat().st_size < 0.4 * (out32 / f).stat().st_size, f   # measured 0.28-0.29
    assert (out8 / "tae_decode_step.onnx").stat().st_size == (out32 / "tae_decode_step.onnx").stat().st_size


def test_int8_graphs_close_to_fp32(exported, exported_int8):
    (bundle, out32), (_, out8) = exported, exported_int8
    g = torch.Generator().manual_seed(2)
    feeds = {"text": torch.randn(3, 384, generator=g).numpy(), "latents": torch.randn(3, 9, 16, generator=g).numpy(),
             "n_latents": np.full(3, 4)}
    c32, k, v = run(out32 / "prefill.onnx", feeds)
    assert rel_max(run(out8 / "prefill.onnx", feeds)[0], c32) < INT8_COND_TOL
    dec = {"latent": feeds["latents"][:, 0], "k_cache": k, "v_cache": v, "pos": np.full(3, 5)}
    assert rel_max(run(out8 / "decode_step.onnx", dec)[0], run(out32 / "decode_step.onnx", dec)[0]) < INT8_COND_TOL
    other = torch.randn(3, bundle.t2m.config.n_embd, generator=g).numpy()
    head = {"cond": c32, "uncond": other, "x_T": torch.randn(3, 16, generator=g).numpy(),
            "cfg_scale": np.array([3.0], np.float32)}   # deterministic ddim: no noise or temperature inputs
    h32, h8 = run(out32 / "head_ddim5.onnx", head)[0], run(out8 / "head_ddim5.onnx", head)[0]
    effect = np.abs(run(out32 / "head_ddim5.onnx", {**head, "cond": other})[0] - h32).max()
    assert np.abs(h8 - h32).max() < INT8_HEAD_VS_COND_EFFECT * effect


def test_int8_ort_stream_close_to_fp32(exported, exported_int8):
    (_, out32), (_, out8) = exported, exported_int8
    config = GenerationConfig(sampler="ddim", sampling_steps=5, end_threshold=-1.0, max_latents=14, cfg_scale=2.5)
    chunks = []
    for out in (out32, out8):
        s = ort_session(out, FakeTextEncoder(384), config=config, seed=7)
        s.push_text("walk forward", max_latents=6)
        s.push_text("turn left", after_current=True)   # crosses the window: re-prefill
        chunks.append(list(s))
    assert len(chunks[0]) == len(chunks[1]) == 14
    a, b = (torch.stack([c.latent for c in ch]) for ch in chunks)
    assert ((b - a).norm(dim=-1) / a.norm(dim=-1)).max() < INT8_STREAM_TOL
    for c in chunks[1]:
        assert c.features.shape == (4, 272) and c.joints.shape == (4, 22, 3)
        assert torch.isfinite(c.features).all() and torch.isfinite(c.joints).all()


def test_bad_quantize_value_is_a_clear_error(exported, tmp_path, capsys):
    from motionstreamer.cli import main

    with pytest.raises(ValueError, match="quantize='fp16'.*int8"):
        export_bundle(exported[0], tmp_path, quantize="fp16")
    with pytest.raises(SystemExit) as e:
        main(["export-onnx", "--out", str(tmp_path / "x"), "--quantize", "int4"])
    assert e.value.code == 2 and "bad --quantize 'int4': use int8" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
