"""A distilled bundle in the runtime: one condition row per stream (no unconditional KV rows, head
batch = streams) in the engine, the CUDA-graph backend's CPU path, the ONNX export and the
onnxruntime engine; --steps among the student's counts; teacher bundles unchanged bit for bit."""
import numpy as np
import pytest
import torch
from fakes import FakeTextEncoder, randomize_head

from motionstreamer.checkpoints import add_student_head, load_bundle, save_bundle
from motionstreamer.models.few_step import StudentHead, StudentHeadConfig
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
from motionstreamer.runtime.reference import reference_stream
from motionstreamer.runtime.session import StreamingSession

# the engine's tolerance against the reference sampler (tests/test_runtime_engine.py: KV-cache
# attention and precomputed AdaLN modulations reorder float sums)
LATENT_RTOL = 1e-5
ORT_RTOL = 2e-3     # onnxruntime vs PyTorch, fp32, a whole stream (tests/test_export_onnx.py's bound)
TEXT = 384


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(teacher bundle dir, the same bundle with a random-weight 1/2-step student)."""
    root = tmp_path_factory.mktemp("student_rt")
    torch.manual_seed(0)
    config = T2MConfig.small()
    config.block_size = 10                      # streams below cross the window slide (re-prefill)
    t2m = randomize_head(TextToMotionModel(config)).eval()
    tae = CausalHumanTAE(TAEConfig.small()).eval()
    g = torch.Generator().manual_seed(2)
    save_bundle(root / "teacher", tae, t2m, torch.randn(272, generator=g) * 0.1, torch.rand(272, generator=g) + 0.5,
                torch.full((16,), 100.0), text_encoder="minilm",
                extra_config={"sampler": {"skip_terminal_step": True}})
    student = StudentHead(t2m.config.head, StudentHeadConfig(steps=(1, 2), default_steps=2, top_timestep=48))
    student.load_state_dict(randomize_head(TextToMotionModel(config), seed=9).diff_loss.state_dict())
    add_student_head(root / "teacher", student, root / "student")
    return root / "teacher", root / "student"


def stream_latents(engine, prompts, seeds, n):
    ids = [engine.add_stream(p, seed=s) for p, s in zip(prompts, seeds)]
    out = {i: [] for i in ids}
    for _ in range(n):
        for c in engine.step():
            out[c.stream_id].append(c.latent)
    return [torch.stack(out[i]) for i in ids]


def student_config(**kw):
    return GenerationConfig(head="student", end_threshold=-1.0, **kw)


def test_student_engine_holds_one_row_per_stream_and_equals_the_reference(bundles):
    _, sdir = bundles
    b, enc = load_bundle(sdir), FakeTextEncoder(TEXT)
    engine = StreamingEngine(b, enc, capacity=2, config=student_config())
    assert engine.settings.head == "student" and engine.settings.sampling_steps == 2   # the student's default
    assert engine.rows == 1 and engine.backend.condition_rows == 1
    assert engine.backend.cache.batch == 2           # KV rows = streams: no unconditional rows
    seen = []
    sample = engine.backend.sample
    engine.backend.sample = lambda c, noise, s: seen.append(tuple(c.shape)) or sample(c, noise, s)
    got = stream_latents(engine, ["walk forward", "jump"], [3, 4], 12)
    assert seen and all(shape[:2] == (2, 1) for shape in seen)    # head batch = streams, one row each
    for prompt, seed, lat in zip(["walk forward", "jump"], [3, 4], got):
        ref = reference_stream(b.t2m, b.tae, [(enc.encode([prompt])[0], 12)], enc.encode([""])[0],
                               torch.Generator().manual_seed(seed), student_config(), decode_every_latent=False,
                               context=lat, student=b.student)
        err = (ref.latents - lat).abs().max() / lat.abs().max()
        assert err <= LATENT_RTOL, err


@pytest.mark.parametrize("steps", [1, 2])
def test_graphed_backend_cpu_path_samples_the_student(bundles, steps):
    from motionstreamer.runtime.backend import TorchBackend
    from motionstreamer.runtime.cuda_graph import GraphedBackend

    _, sdir = bundles
    b = load_bundle(sdir)
    settings = student_config(sampling_steps=steps).sampler_settings()
    eager = TorchBackend(b, 3, torch.device("cpu"), torch.float32, condition_rows=1)
    graphed = GraphedBackend(b, 3, torch.device("cpu"), torch.float32, condition_rows=1)
    assert graphed.head(settings) is b.student and eager.noise_steps(settings) == steps
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 1, b.t2m.config.n_embd, generator=g)
    noise = (torch.randn(3, 16, generator=g), torch.randn(steps, 3, 16, generator=g))
    want = b.student.sample(cond[:, 0], settings=settings, noise=noise, fast=False)
    for got in (graphed.sample(cond, noise, settings), eager.sample(cond, noise, settings)):
        # fast (precomputed AdaLN) vs plain forward, fp32: reordered sums (as the teacher's tests)
        assert (got - want).abs().max() / want.abs().max() < 1e-4


def test_teacher_streams_are_bit_identical_with_a_student_in_the_bundle(bundles):
    tdir, sdir = bundles
    enc = FakeTextEncoder(TEXT)
    for config in (GenerationConfig(sampling_steps=5, end_threshold=-1.0), GenerationConfig(head="teacher",
                                                                                      end_threshold=-1.0)):
        a = stream_latents(StreamingEngine(load_bundle(tdir), enc, capacity=2, config=config), ["walk", "run"],
                           [1, 2], 11)
        s_engine = StreamingEngine(load_bundle(sdir), enc, capacity=2, config=config)
        assert s_engine.settings.head == "teacher" and s_engine.backend.condition_rows == 2
        b = stream_latents(s_engine, ["walk", "run"], [1, 2], 11)
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_student_steps_and_missing_student_are_clear_errors(bundles):
    tdir, sdir = bundles
    enc = FakeTextEncoder(TEXT)
    with pytest.raises(ValueError, match=r"samples in 1, 2 steps, not 4 .*--teacher|samples in 1, 2 steps, not 4"):
        StreamingEngine(load_bundle(sdir), enc, config=student_config(sampling_steps=4))
    with pytest.raises(ValueError, match="no few-step student head"):
        StreamingEngine(load_bundle(tdir), enc, config=student_config())
    with pytest.raises(ValueError, match="student head samples with 'ddpm'"):
        StreamingEngine(load_bundle(sdir), enc, config=student_config(sampler="ddim"))


@pytest.mark.parametrize("argv,msg", [
    (["--head", "student", "--sampling-steps", "4"], "samples in 1, 2 steps, not 4"),
    (["--head", "student", "--sampler", "ddim"], "samples with 'ddpm'"),
])
def test_generate_cli_student_errors(bundles, tmp_path, capsys, argv, msg):
    from motionstreamer.cli import main

    _, sdir = bundles
    with pytest.raises(SystemExit) as e:
        main(["generate", "a person walks", "--checkpoint", str(sdir), "--out", str(tmp_path / "g"),
              "--max-seconds", "1", *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_generate_cli_runs_the_student(bundles, tmp_path):
    from motionstreamer.cli import main

    _, sdir = bundles
    assert main(["generate", "a person walks", "--checkpoint", str(sdir), "--out", str(tmp_path / "g"),
                 "--max-seconds", "1", "--head", "student", "--sampling-steps", "1"]) == 0
    assert np.load(tmp_path / "g.npy").shape[1] == 272


# ----------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def exported(bundles, tmp_path_factory):
    from motionstreamer.export.onnx_export import export_bundle

    _, sdir = bundles
    out = tmp_path_factory.mktemp("student_onnx")
    manifest = export_bundle(load_bundle(sdir), out, variants=[("ddpm", 5), ("student", 1), ("student", 2)])
    return sdir, out, manifest


def test_student_head_graph_has_no_guidance_inputs_and_equals_the_module(exported):
    import onnxruntime as ort

    sdir, out, manifest = exported
    heads = {(h["head"], h["sampling_steps"]): h for h in manifest["heads"]}
    assert set(heads) == {("teacher", 5), ("student", 1), ("student", 2)}
    b = load_bundle(sdir)
    settings = student_config(sampling_steps=2).sampler_settings()
    sess = ort.InferenceSession(str(out / heads[("student", 2)]["file"]), providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} == {"cond", "x_T", "step_noise", "temperature"}
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(4, b.t2m.config.n_embd, generator=g)
    x, nz = torch.randn(4, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    got = sess.run(None, {"cond": cond.numpy(), "x_T": x.numpy(), "step_noise": nz.numpy(),
                          "temperature": np.array([1.0], np.float32)})[0]
    want = b.student.sample(cond, settings=settings, noise=(x, nz), fast=False)
    assert np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max() < 1e-4


def test_ort_student_stream_matches_torch_with_one_kv_row_per_stream(exported):
    sdir, out, _ = exported
    from motionstreamer.runtime.ort_backend import ort_session

    config = student_config(max_latents=12)
    a = StreamingSession(load_bundle(sdir), FakeTextEncoder(TEXT), config=config, seed=7)
    b = ort_session(out, FakeTextEncoder(TEXT), config=config, seed=7)
    assert b.engine.backend.condition_rows == 1 and b.engine.backend.k.shape[1] == 1
    for s in (a, b):
        s.push_text("walk forward", max_latents=5)
        s.push_text("turn left", after_current=True)
    ca, cb = list(a), list(b)
    assert len(ca) == len(cb) == 12
    la, lb = torch.stack([c.latent for c in ca]), torch.stack([c.latent for c in cb])
    assert (la - lb).abs().max() / la.abs().max() < ORT_RTOL


def test_export_student_variant_errors(bundles, tmp_path):
    from motionstreamer.export.onnx_export import export_bundle

    tdir, sdir = bundles
    with pytest.raises(ValueError, match="samples in 1, 2 steps, not 3"):
        export_bundle(load_bundle(sdir), tmp_path / "a", variants=[("student", 3)])
    with pytest.raises(ValueError, match="no few-step student head"):
        export_bundle(load_bundle(tdir), tmp_path / "b", variants=[("student", 1)])


def test_serve_cli_checks_the_student_before_starting(bundles, capsys):
    from motionstreamer.cli import main

    tdir, sdir = bundles
    for argv, msg in ((["--checkpoint", str(tdir)], "no few-step student head"),
                      (["--checkpoint", str(sdir), "--sampling-steps", "10"], "samples in 1, 2 steps, not 10")):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--head", "student", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
