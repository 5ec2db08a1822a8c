"""A distilled bundle in the runtime: one condition row per stream (no unconditional KV rows, head
batch = streams) in the engine, the CUDA-graph backend's CPU path, the ONNX export and the
onnxruntime engine; --steps among the student's counts; teacher bundles unchanged bit for bit."""
import numpy as np
import pytest
import torch
from fakes import FakeTextEncoder, randomize_head

from motionstreamer.checkpoints import add_student_head, bundle_config_of, load_bundle, save_bundle
from motionstreamer.models.few_step import StudentHead, StudentHeadConfig
from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
from motionstreamer.models.transformer import T2MConfig, TextToMotionModel
from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine, resolve_config
from motionstreamer.runtime.reference import reference_stream
from motionstreamer.runtime.session import StreamingSession

# the engine's tolerance against the reference sampler (tests/test_runtime_engine.py: KV-cache
# attention and precomputed AdaLN modulations reorder float sums)
LATENT_RTOL = 1e-5
ORT_RTOL = 2e-3     # onnxruntime vs PyTorch, fp32, a whole stream (tests/test_export_onnx.py's bound)
TEXT = 384


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(teacher bundle dir, the same bundle with a random-weight 1/2-step student, and with a 1/2-step
    student that owns its conditional path: the last 2 blocks, ln_f, out_proj, perturbed from the
    teacher's so its conditions differ)."""
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
    own = StudentHead(t2m.config.head, StudentHeadConfig(steps=(1, 2), default_steps=2, top_timestep=48,
                                                         condition_blocks=2), t2m.config).init_from(t2m)
    own.net.load_state_dict(student.net.state_dict())
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in own.condition.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    add_student_head(root / "teacher", own, root / "student_path")
    # a student that keeps guidance, at a scale of its own (not the teacher's nor the sampler default 4)
    guided = StudentHead(t2m.config.head, StudentHeadConfig(steps=(1, 2), default_steps=2, top_timestep=48,
                                                            cfg_scale=GUIDED_SCALE))
    guided.load_state_dict(randomize_head(TextToMotionModel(config), seed=11).diff_loss.state_dict())
    add_student_head(root / "teacher", guided, root / "student_guided")
    return root / "teacher", root / "student", root / "student_path", root / "student_guided"


GUIDED_SCALE = 2.5
STUDENTS = ["student", "student_path", "student_guided"]


def student_dir(bundles, which: str):
    return bundles[1 + STUDENTS.index(which)]


def rows_of(which: str) -> int:
    """Condition (KV-cache) rows per stream: [cond; uncond] for a guided student, else its one row."""
    return 2 if which == "student_guided" else 1


def stream_latents(engine, prompts, seeds, n):
    ids = [engine.add_stream(p, seed=s) for p, s in zip(prompts, seeds)]
    out = {i: [] for i in ids}
    for _ in range(n):
        for c in engine.step():
            out[c.stream_id].append(c.latent)
    return [torch.stack(out[i]) for i in ids]


def student_config(**kw):
    return GenerationConfig(head="student", end_threshold=-1.0, **kw)


@pytest.mark.parametrize("which", STUDENTS)
def test_student_engine_holds_its_rows_per_stream_and_equals_the_reference(bundles, which):
    b, enc = load_bundle(student_dir(bundles, which)), FakeTextEncoder(TEXT)
    engine = StreamingEngine(b, enc, capacity=2, config=student_config())
    rows = rows_of(which)
    assert engine.settings.head == "student" and engine.settings.sampling_steps == 2   # the student's default
    # the student's own guidance scale, whatever the config's (GenerationConfig's default 4)
    assert engine.settings.cfg_scale == (GUIDED_SCALE if rows == 2 else 1.0)
    assert engine.rows == rows and engine.backend.condition_rows == rows
    assert engine.backend.cache.batch == 2 * rows    # KV rows = streams x rows: unconditional ones only if guided
    seen = []
    sample = engine.backend.sample
    engine.backend.sample = lambda c, noise, s: seen.append(tuple(c.shape)) or sample(c, noise, s)
    got = stream_latents(engine, ["walk forward", "jump"], [3, 4], 12)
    assert seen and all(shape[:2] == (2, rows) for shape in seen)    # head batch = streams, their rows
    for prompt, seed, lat in zip(["walk forward", "jump"], [3, 4], got):
        ref = reference_stream(b.t2m, b.tae, [(enc.encode([prompt])[0], 12)], enc.encode([""])[0],
                               torch.Generator().manual_seed(seed), student_config(), decode_every_latent=False,
                               context=lat, student=b.student)
        err = (ref.latents - lat).abs().max() / lat.abs().max()
        assert err <= LATENT_RTOL, err


def test_student_model_runs_the_teachers_first_blocks_then_its_own(bundles):
    b = load_bundle(bundles[2])
    t2m, student = b.t2m, b.student
    model = student.model(t2m)
    # shared, not copied: the teacher's embeddings and first blocks, the student's last blocks and projection
    assert model.transformer.wte.weight.data_ptr() == t2m.transformer.wte.weight.data_ptr()
    assert all(model.transformer.h[i] is t2m.transformer.h[i] for i in range(2))
    assert all(model.transformer.h[2 + i] is student.condition.blocks[i] for i in range(2))
    assert model.out_proj is student.condition.out_proj and model.diff_loss is student
    g = torch.Generator().manual_seed(1)
    lat, text = torch.randn(2, 5, 16, generator=g), torch.randn(2, TEXT, generator=g)
    # by hand from the modules: text token + latent tokens, teacher blocks 0-1, student blocks, ln_f, out_proj
    from motionstreamer.models.transformer import KVWriter
    x = torch.cat([t2m.transformer.cond_embed(text)[:, None], t2m.transformer.wte(lat)], dim=1)
    cos, sin = t2m.rope_cos[:6], t2m.rope_sin[:6]
    for block in [*t2m.transformer.h[:2], *student.condition.blocks]:
        x = block(x, cos, sin, KVWriter(), 0)
    want = student.condition.out_proj(student.condition.ln_f(x))
    torch.testing.assert_close(model(lat, text), want, rtol=0, atol=0)
    assert (model(lat, text) - t2m(lat, text)).abs().max() > 1e-3      # the perturbed path differs
    # initialised from the teacher, the student's conditions are the teacher's, bit for bit
    fresh = StudentHead(t2m.config.head, student.student_config, t2m.config).init_from(t2m)
    assert torch.equal(fresh.model(t2m)(lat, text), t2m(lat, text))
    for k in (0, 4):
        cfg = StudentHeadConfig(steps=(1,), default_steps=1, top_timestep=48, condition_blocks=k)
        assert torch.equal(StudentHead(t2m.config.head, cfg, t2m.config).init_from(t2m).model(t2m)(lat, text),
                           t2m(lat, text))
    with pytest.raises(ValueError, match="exceeds the transformer's 4 blocks"):
        StudentHead(t2m.config.head, StudentHeadConfig(condition_blocks=5), t2m.config)
    with pytest.raises(ValueError, match="needs the teacher's transformer config"):
        StudentHead(t2m.config.head, StudentHeadConfig(condition_blocks=1))
    with pytest.raises(ValueError, match="condition_blocks must be null or an int >= 0"):
        StudentHeadConfig(condition_blocks=-1)


def test_a_backend_samples_only_its_own_head(bundles):
    from motionstreamer.runtime.backend import TorchBackend

    b = load_bundle(bundles[2])
    teacher = TorchBackend(b, 1, torch.device("cpu"), torch.float32)
    student = TorchBackend(b, 1, torch.device("cpu"), torch.float32, condition_rows=1, head="student")
    with pytest.raises(ValueError, match="runs the teacher's model; settings for the student"):
        teacher.noise_steps(student_config().sampler_settings())
    with pytest.raises(ValueError, match="runs the student's model; settings for the teacher"):
        student.noise_steps(GenerationConfig().sampler_settings())
    with pytest.raises(ValueError, match="runs the teacher's model"):
        StreamingEngine(b, FakeTextEncoder(TEXT), config=student_config(), backend=teacher)
    with pytest.raises(ValueError, match="no few-step student head"):
        TorchBackend(load_bundle(bundles[0]), 1, torch.device("cpu"), torch.float32, head="student")


@pytest.mark.parametrize("which", ["student", "student_guided"])
@pytest.mark.parametrize("steps", [1, 2])
def test_graphed_backend_cpu_path_samples_the_student(bundles, steps, which):
    from motionstreamer.runtime.backend import TorchBackend
    from motionstreamer.runtime.cuda_graph import GraphedBackend

    b, rows = load_bundle(student_dir(bundles, which)), rows_of(which)
    settings = resolve_config(student_config(sampling_steps=steps), bundle_config_of(b)).sampler_settings()
    assert settings.condition_rows == rows
    eager = TorchBackend(b, 3, torch.device("cpu"), torch.float32, condition_rows=rows, head="student")
    graphed = GraphedBackend(b, 3, torch.device("cpu"), torch.float32, condition_rows=rows, head="student")
    assert graphed.head_module(settings) is b.student and eager.noise_steps(settings) == steps
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, rows, b.t2m.config.n_embd, generator=g)
    noise = (torch.randn(3, 16, generator=g), torch.randn(steps, 3, 16, generator=g))
    want = b.student.sample(*cond.unbind(1), settings=settings, noise=noise, fast=False)
    for got in (graphed.sample(cond, noise, settings), eager.sample(cond, noise, settings)):
        # fast (precomputed AdaLN) vs plain forward, fp32: reordered sums (as the teacher's tests)
        assert (got - want).abs().max() / want.abs().max() < 1e-4


@pytest.mark.parametrize("which", STUDENTS)
def test_teacher_streams_are_bit_identical_with_a_student_in_the_bundle(bundles, which):
    tdir, sdir = bundles[0], student_dir(bundles, which)
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
    tdir, sdir = bundles[:2]
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

    sdir = bundles[1]
    with pytest.raises(SystemExit) as e:
        main(["generate", "a person walks", "--checkpoint", str(sdir), "--out", str(tmp_path / "g"),
              "--max-seconds", "1", *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_generate_cli_runs_the_student(bundles, tmp_path):
    from motionstreamer.cli import main

    sdir = bundles[2]
    assert main(["generate", "a person walks", "--checkpoint", str(sdir), "--out", str(tmp_path / "g"),
                 "--max-seconds", "1", "--head", "student", "--sampling-steps", "1"]) == 0
    assert np.load(tmp_path / "g.npy").shape[1] == 272


# ----------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module", params=STUDENTS)
def exported(bundles, tmp_path_factory, request):
    from motionstreamer.export.onnx_export import export_bundle

    sdir = student_dir(bundles, request.param)
    out = tmp_path_factory.mktemp("student_onnx")
    manifest = export_bundle(load_bundle(sdir), out, variants=[("ddpm", 5), ("student", 1), ("student", 2)])
    return sdir, out, manifest


def test_student_transformer_graphs_are_exported_when_it_owns_its_path(exported):
    import onnxruntime as ort

    sdir, out, manifest = exported
    b = load_bundle(sdir)
    if b.student.condition is None:
        assert manifest["student_transformer"] is None and not (out / "prefill_student.onnx").exists()
        return
    files = manifest["student_transformer"]
    assert files == {"prefill": "prefill_student.onnx", "decode_step": "decode_step_student.onnx"}
    g = torch.Generator().manual_seed(0)
    text, lat = torch.randn(2, TEXT, generator=g), torch.zeros(2, 9, 16)
    lat[:, :3] = torch.randn(2, 3, 16, generator=g)
    n = np.array([3, 3], np.int64)
    for name, model in (("prefill.onnx", b.t2m), (files["prefill"], b.student.model(b.t2m))):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        cond = sess.run(None, {"text": text.numpy(), "latents": lat.numpy(), "n_latents": n})[0]
        want = model(lat[:, :3], text)[:, -1].detach().numpy()
        assert np.abs(cond - want).max() / np.abs(want).max() < 1e-4, name


def test_student_head_graph_has_guidance_inputs_only_if_guided_and_equals_the_module(exported):
    import onnxruntime as ort

    sdir, out, manifest = exported
    heads = {(h["head"], h["sampling_steps"]): h for h in manifest["heads"]}
    assert set(heads) == {("teacher", 5), ("student", 1), ("student", 2)}
    b = load_bundle(sdir)
    guided = b.student.student_config.cfg_scale != 1.0
    settings = resolve_config(student_config(sampling_steps=2), bundle_config_of(b)).sampler_settings()
    sess = ort.InferenceSession(str(out / heads[("student", 2)]["file"]), providers=["CPUExecutionProvider"])
    inputs = {"cond", "x_T", "step_noise", "temperature"}
    assert {i.name for i in sess.get_inputs()} == (inputs | {"uncond", "cfg_scale"} if guided else inputs)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, b.t2m.config.n_embd, generator=g), torch.randn(4, b.t2m.config.n_embd, generator=g)
    x, nz = torch.randn(4, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    feeds = {"cond": cond.numpy(), "x_T": x.numpy(), "step_noise": nz.numpy(),
             "temperature": np.array([1.0], np.float32)}
    if guided:
        feeds.update(uncond=uncond.numpy(), cfg_scale=np.array([GUIDED_SCALE], np.float32))
    got = sess.run(None, feeds)[0]
    want = b.student.sample(cond, uncond if guided else None, settings=settings, noise=(x, nz), fast=False)
    assert np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max() < 1e-4


def test_ort_student_stream_matches_torch_with_its_kv_rows_per_stream(exported):
    sdir, out, _ = exported
    from motionstreamer.runtime.ort_backend import ort_session

    config = student_config(max_latents=12)
    a = StreamingSession(load_bundle(sdir), FakeTextEncoder(TEXT), config=config, seed=7)
    b = ort_session(out, FakeTextEncoder(TEXT), config=config, seed=7)
    rows = 2 if load_bundle(sdir).student.student_config.cfg_scale != 1.0 else 1
    assert b.engine.backend.condition_rows == rows and b.engine.backend.k.shape[1] == rows
    for s in (a, b):
        s.push_text("walk forward", max_latents=5)
        s.push_text("turn left", after_current=True)
    ca, cb = list(a), list(b)
    assert len(ca) == len(cb) == 12
    la, lb = torch.stack([c.latent for c in ca]), torch.stack([c.latent for c in cb])
    assert (la - lb).abs().max() / la.abs().max() < ORT_RTOL


def test_export_student_variant_errors(bundles, tmp_path):
    from motionstreamer.export.onnx_export import export_bundle

    tdir, sdir = bundles[:2]
    with pytest.raises(ValueError, match="samples in 1, 2 steps, not 3"):
        export_bundle(load_bundle(sdir), tmp_path / "a", variants=[("student", 3)])
    with pytest.raises(ValueError, match="no few-step student head"):
        export_bundle(load_bundle(tdir), tmp_path / "b", variants=[("student", 1)])


def test_serve_cli_checks_the_student_before_starting(bundles, capsys):
    from motionstreamer.cli import main

    tdir, sdir = bundles[:2]
    for argv, msg in ((["--checkpoint", str(tdir)], "no few-step student head"),
                      (["--checkpoint", str(sdir), "--sampling-steps", "10"], "samples in 1, 2 steps, not 10")):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--head", "student", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_a_default_student_yields_to_the_teacher_only_for_step_counts_it_lacks(bundles, tmp_path):
    """A bundle whose default head is its student (config.json sampler.head, as the embedded model's):
    no flags -> the student at its default count and its own guidance scale; a count the student
    samples in -> the student; a count only the teacher samples in (the original 50, serve's 10) -> the
    teacher, with the config's guidance scale; --head student with such a count is an error naming the
    student's counts; --head teacher is the original algorithm."""
    import json
    import shutil

    from motionstreamer.checkpoints import read_bundle_config

    d = tmp_path / "default_student"
    shutil.copytree(student_dir(bundles, "student_guided"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["sampler"] = {**cfg.get("sampler", {}), "head": "student"}
    (d / "config.json").write_text(json.dumps(cfg))
    b = read_bundle_config(d)

    def resolved(**kw):
        r = resolve_config(GenerationConfig(**kw), b)
        return r.head, r.sampling_steps, r.cfg_scale
    assert resolved() == ("student", 2, GUIDED_SCALE)
    assert resolved(sampling_steps=1) == ("student", 1, GUIDED_SCALE)
    assert resolved(sampling_steps=10) == ("teacher", 10, 4.0)
    assert resolved(sampling_steps=50, cfg_scale=3.0) == ("teacher", 50, 3.0)
    assert resolved(head="teacher") == ("teacher", 50, 4.0)
    with pytest.raises(ValueError, match="samples in 1, 2 steps, not 10"):
        resolved(head="student", sampling_steps=10)
    engine = StreamingEngine(load_bundle(d), FakeTextEncoder(TEXT), config=GenerationConfig(end_threshold=-1.0))
    assert engine.settings.head == "student" and engine.rows == 2 and engine.settings.cfg_scale == GUIDED_SCALE
