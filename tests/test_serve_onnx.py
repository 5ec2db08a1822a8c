"""`serve --onnx DIR`: the live service with its engine's model calls in onnxruntime. Over real sockets, a
service on a bundle and one on the bundle's fp32 export give the same motion for the same seed, one-shot
and streamed (the export's graph parity carried through the stream: 1e-4 one-shot, 1e-5 of the values'
scale streamed); /v1/info says which runtime serves; bad --onnx arguments are clear CLI errors before
anything binds."""
import io
import json

import numpy as np
import pytest

websockets = pytest.importorskip("websockets")
pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from _serve_testing import ServerThread, frames, http_get, http_post, recv_json, run  # noqa: E402
from fakes import save_small_bundle  # noqa: E402

from motionstreamer.checkpoints import load_bundle  # noqa: E402
from motionstreamer.cli import main  # noqa: E402
from motionstreamer.export.onnx_export import export_bundle  # noqa: E402
from motionstreamer.serve.app import create_app  # noqa: E402
from motionstreamer.serve.protocol import ServeLimits, decode_array  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    bundle = save_small_bundle(tmp_path_factory.mktemp("bundle"))
    export = tmp_path_factory.mktemp("export")
    export_bundle(load_bundle(bundle), export, variants=[("ddpm", STEPS)])
    return bundle, export


@pytest.fixture(scope="module")
def servers(model_dirs):
    bundle, export = model_dirs
    limits = ServeLimits(max_streams=2, max_generate_jobs=1)
    with ServerThread(create_app(checkpoint=str(bundle), sampling_steps=STEPS, limits=limits)) as torch_server, \
            ServerThread(create_app(onnx=str(export), sampling_steps=STEPS, limits=limits)) as ort_server:
        yield torch_server, ort_server


def test_info_names_the_runtime(servers, model_dirs):
    for server, runtime in zip(servers, ("torch", "onnxruntime")):
        status, body, _ = http_get(server.http + "/v1/info")
        info = json.loads(body)
        assert status == 200 and info["runtime"] == runtime and info["sampling_steps"] == STEPS
    assert "onnxruntime, fp32" in info["model"] and info["checkpoint"] == str(model_dirs[1])


def test_generate_equals_the_pytorch_service(servers):
    got = []
    for server in servers:
        status, body, _ = http_post(server.http + "/v1/generate", json.dumps(
            {"text": "a person walks forward", "seconds": 2, "format": "npy", "seed": 4}).encode())
        assert status == 200, body
        got.append(np.load(io.BytesIO(body), allow_pickle=False))
    assert got[0].shape == got[1].shape == (60, 272)
    err = np.abs(got[0] - got[1]).max()
    print(f"/v1/generate: max |onnx - torch| = {err:.2e} (|torch| max {np.abs(got[0]).max():.2f})")
    assert err < 1e-4


def test_streams_equal_the_pytorch_service(servers):
    async def stream(server):
        async with websockets.connect(server.ws + "?seed=7&features=1") as ws:
            assert (await recv_json(ws))["type"] == "hello"
            await ws.send(json.dumps({"type": "prompt", "text": "a person waves"}))
            return await frames(ws, 10)

    got = [run(stream(server)) for server in servers]
    for a, b in zip(*got):
        assert a["latent"] == b["latent"] and a["prompt"] == b["prompt"] == "a person waves"
        fa, fb = decode_array(a["features"], (4, 272)), decode_array(b["features"], (4, 272))
        ja, jb = decode_array(a["joints"], (4, 22, 3)), decode_array(b["joints"], (4, 22, 3))
        # fp32 parity relative to the values' scale (the random model's root wanders ~100 m, where one fp32
        # step is 8e-6 m and the accumulated root carries a few of them)
        for x, y in ((fa, fb), (ja, jb)):
            assert np.isfinite(y).all() and np.abs(x - y).max() <= 1e-5 * np.abs(x).max(), np.abs(x - y).max()
    # the ten latents are not all one value: the comparison above compares motion
    feats = np.stack([decode_array(m["features"], (4, 272)) for m in got[1]])
    assert feats.std(axis=(0, 1)).max() > 1e-3


@pytest.mark.parametrize("extra, msg", [
    (["--checkpoint", "."], "leave out --checkpoint, --dtype and --device"),
    (["--dtype", "bf16"], "leave out --checkpoint, --dtype and --device"),
    (["--device", "cuda"], "leave out --checkpoint, --dtype and --device"),
])
def test_onnx_with_torch_options_is_a_cli_error(extra, msg, model_dirs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--onnx", str(model_dirs[1]), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and "Traceback" not in err


def test_bad_onnx_folders_are_cli_errors(model_dirs, tmp_path, capsys):
    cases = [(["--onnx", str(tmp_path / "missing")], "not a directory"),
             (["--onnx", str(model_dirs[0])], "not an exported model folder"),   # a bundle, not an export
             # a step count the export has no head graph for: named, with the variant to export
             (["--onnx", str(model_dirs[1]), "--sampling-steps", "7"], "re-export with --variant ddpm:7")]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            main(["serve", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize("verb", [["serve"], ["generate", "walk", "--out", "x"]])
def test_malformed_manifests_are_cli_errors(verb, model_dirs, tmp_path, capsys):
    """A broken export folder is named with what is wrong, for serve and for generate: bytes that are not
    UTF-8, JSON that is not an object, and a real manifest with one key the engine reads taken out."""
    good = json.loads((model_dirs[1] / "manifest.json").read_text())
    cases = {"bytes": (b"\xff\xfe{", "not a JSON manifest"), "list": (b"[1, 2]", "a JSON object expected, got list"),
             "truncated": (b'{"format": "motionstreamer-onnx", "n_la', "not a JSON manifest"),
             "no_graphs": (json.dumps({k: v for k, v in good.items() if k != "graphs"}).encode(), "lacks graphs (")}
    for name, (content, msg) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "manifest.json").write_bytes(content)
        with pytest.raises(SystemExit) as e:
            main([*verb, "--onnx", str(d), *(["--out-dir", str(tmp_path)] if verb[0] == "generate" else [])])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and str(d / "manifest.json") in err and "Traceback" not in err, err
