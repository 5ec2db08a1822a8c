"""Stream isolation: two clients with fixed seeds get the same motion whether they are alone on the
server or beside 20 churning clients (connecting, prompting at random, dropping, garbage messages).

Each stream draws its noise from its own generator, so only the batch composition differs: fp32 CPU
matmuls round slightly differently at other batch sizes (<= 1e-6 relative per step, docs/streaming.md's
batch-mate bound), and the autoregression amplifies that, as it amplifies any rounding (docs/streaming.md's
free-running divergence). Measured on the embedded model (4 steps): 0 to 2e-5 m over the first 30
latents, up to 6e-4 m after 40 on a quiet machine and 4.7e-3 m once under load, where the batches
differ most. A leak of state or noise between streams moves the motion by what another seed does
(0.8 m here). So: the first latents within 0.1 mm, the stream within 2 cm while the same prompt runs,
until an action first ends (an end-of-action test a rounding apart may flip and restart a prompt one
latent later, and a restart starts from its last few latents, which moves a rounding difference on
by more: 2.6 cm once in CI over a stream with restarts).
"""
import asyncio
import json
import random

import numpy as np
import pytest

websockets = pytest.importorskip("websockets")
pytest.importorskip("fastapi")

from _serve_testing import ServerThread, recv_json, run  # noqa: E402

from motionstreamer.serve.app import create_app  # noqa: E402
from motionstreamer.serve.protocol import ServeLimits, decode_array  # noqa: E402

EARLY_LATENTS, EARLY_BOUND_M = 8, 1e-4
BOUND_M = 2e-2
SCRIPT = [{"type": "prompt", "text": "a person walks forward", "seconds": 1.6},
          {"type": "prompt", "text": "a person waves with the left hand", "seconds": 1.6, "after_current": True}]


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(sampling_steps=4, limits=ServeLimits(max_streams=24))) as s:
        yield s


async def fixed_client(url: str, seed: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """The scripted stream (deterministic switch points: seconds + after_current) until it finishes:
    its joints and, at each latent, the action in effect (its prompt, and how many actions ended before)."""
    async with websockets.connect(f"{url}?seed={seed}") as ws:
        await recv_json(ws)
        for m in SCRIPT:
            await ws.send(json.dumps(m))
        joints, prompts, ends = [], [], 0
        while True:
            m = await recv_json(ws, 60)
            ends += sum(e["kind"] == "action_end" for e in m.get("events", []))
            if m["type"] == "frames":
                joints.append(decode_array(m["joints"], (4, 22, 3)))
                prompts.append((m["prompt"], ends))
            if any(e["kind"] == "finished" for e in m.get("events", [])):
                return np.stack(joints), prompts


async def churning_client(url: str, rng: random.Random, stop: asyncio.Event) -> int:
    prompts = ["a person jogs forward", "a person jumps up", "a person turns to the left", "a person sits down",
               "a person does a squat", "a person kicks with the right leg"]
    sessions = 0
    while not stop.is_set():
        try:
            async with websockets.connect(url + (f"?seed={rng.randrange(1000)}" if rng.random() < 0.5 else "")) as ws:
                sessions += 1
                await recv_json(ws)
                for _ in range(rng.randint(1, 4)):
                    kind = rng.random()
                    if kind < 0.7:
                        await ws.send(json.dumps({"type": "prompt", "text": rng.choice(prompts),
                                                  "after_current": rng.random() < 0.3}))
                    elif kind < 0.85:
                        await ws.send("{garbage")
                    else:
                        await ws.send(json.dumps({"type": "prompt", "text": "x" * 500}))
                    deadline = asyncio.get_running_loop().time() + rng.uniform(0.2, 1.0)
                    while asyncio.get_running_loop().time() < deadline and not stop.is_set():
                        try:
                            await asyncio.wait_for(ws.recv(), 0.2)
                        except asyncio.TimeoutError:
                            pass
        except (websockets.ConnectionClosed, OSError):
            pass
    return sessions


def test_fixed_seed_streams_are_unaffected_by_neighbours(server):
    async def alone():
        return await asyncio.gather(fixed_client(server.ws, 11), fixed_client(server.ws, 12))

    async def crowded():
        stop = asyncio.Event()
        rng = random.Random(0)
        churn = [asyncio.create_task(churning_client(server.ws, random.Random(rng.random()), stop))
                 for _ in range(20)]
        await asyncio.sleep(1.0)
        fixed = await asyncio.gather(fixed_client(server.ws, 11), fixed_client(server.ws, 12))
        stop.set()
        sessions = await asyncio.gather(*churn)
        return fixed, sessions

    ref_a, ref_b = run(alone())
    (a, b), sessions = run(crowded())
    assert sum(sessions) >= 20                   # the neighbours really came and went
    assert server.service.scheduler.stats["batch_ema"] > 2   # ... and shared the engine's batches
    for (ref, ref_prompts), (got, got_prompts) in ((ref_a, a), (ref_b, b)):
        same = next((i for i, (p, q) in enumerate(zip(ref_prompts, got_prompts)) if p != q or p[1] > 0),
                    min(len(ref_prompts), len(got_prompts)))
        assert same >= 14, (ref_prompts, got_prompts)     # both scripted prompts ran in both
        early = np.abs(ref[:EARLY_LATENTS] - got[:EARLY_LATENTS]).max()
        assert early < EARLY_BOUND_M, f"joint difference {early:.2e} m in the first latents beside other streams"
        err = np.abs(ref[:same] - got[:same]).max()
        assert err < BOUND_M, f"joint difference {err:.2e} m beside other streams"
    assert np.abs(ref_a[0][:12] - ref_b[0][:12]).max() > 0.1    # different seeds do give different motions
