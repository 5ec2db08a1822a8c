"""Scale-out on Ray Serve: a local Ray (loopback only) runs the app as 2 CPU replicas; WebSocket
clients through Ray's proxy land on both; one replica is killed mid-run (SIGKILL, as a crash): its
clients see the documented close (the connection drops without a close frame: 1006 on the client),
the other replica's clients keep streaming, and a reconnecting client is served again."""
import asyncio
import json
import os
import signal
import socket
import time

import pytest

websockets = pytest.importorskip("websockets")
pytest.importorskip("ray.serve")

from _serve_testing import run  # noqa: E402


@pytest.fixture(scope="module")
def ray_serve():
    import ray
    from ray import serve

    from motionstreamer.serve.ray_app import build_app, pin_ray_to_loopback

    pin_ray_to_loopback()
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"replicas": 2, "cpus_per_replica": 1, "sampling_steps": 2, "limits": {"max_streams": 6}}),
                  name="motionstreamer", route_prefix="/")
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


async def client(url, seed, log):
    rec = log[seed] = {"frames": 0, "closed": None}
    try:
        async with websockets.connect(f"{url}?seed={seed}") as ws:
            rec["server"] = json.loads(await ws.recv())["server"]
            await ws.send(json.dumps({"type": "prompt", "text": "a person walks forward"}))
            while True:
                m = json.loads(await ws.recv())
                if m["type"] == "frames":
                    rec["frames"] += 1
                    rec["last"] = time.monotonic()
    except websockets.ConnectionClosed as e:
        rec["closed"] = e.rcvd.code if e.rcvd else 1006
        rec["closed_at"] = time.monotonic()


def test_two_replicas_one_killed(ray_serve):
    url = f"ws://127.0.0.1:{ray_serve}/v1/stream"

    async def go():
        log, tasks = {}, []
        # clients arrive one at a time: the proxy routes a new socket by the replicas' ongoing streams,
        # which count the previous socket once it is open (a burst under CPU load could land on one)
        for i in range(6):
            tasks.append(asyncio.create_task(client(url, i, log)))
            t0 = time.monotonic()
            while "server" not in log.get(i, {}) and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len({r.get("server") for r in log.values()} - {None}) < 2
                                               or min((r["frames"] for r in log.values()), default=0) < 5
                                               or len(log) < 6):
            await asyncio.sleep(0.2)
        servers = sorted({r["server"] for r in log.values()})
        assert len(servers) == 2, f"clients did not spread over both replicas: {log}"
        victim = servers[0]
        os.kill(int(victim.rsplit("-", 1)[1]), signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.sleep(4.0)
        again = {}
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_reconnect(url, again))), 60)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return log, victim, killed_at, again

    log, victim, killed_at, again = run(go())
    on_victim = [r for r in log.values() if r["server"] == victim]
    others = [r for r in log.values() if r["server"] != victim]
    assert on_victim and others
    for r in on_victim:
        assert r["closed"] == 1006 and r["closed_at"] - killed_at < 3.0, r
    for r in others:
        assert r["closed"] is None and r["last"] - killed_at > 3.0, r     # still streaming 3 s after the kill
    assert again["frames"] >= 3 and again["server"] != victim


async def _reconnect(url, rec):
    async with websockets.connect(url + "?seed=99") as ws:
        rec["server"] = json.loads(await ws.recv())["server"]
        await ws.send(json.dumps({"type": "prompt", "text": "a person jumps up"}))
        rec["frames"] = 0
        while rec["frames"] < 3:
            if json.loads(await ws.recv())["type"] == "frames":
                rec["frames"] += 1


@pytest.mark.parametrize("to_group", [False, True], ids=["process", "process group"])
def test_sigterm_shuts_serve_down_with_one_line(to_group, tmp_path):
    """`serve --ray` stopped with SIGTERM (sent to it alone, as `kill PID` or `docker stop` does, or to its
    whole process group, as systemd does by default: then Ray's own processes get it too): Serve and Ray
    shut down, one line says so, exit 0; never Ray's native fault-handler stack dump."""
    import subprocess
    import sys
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([sys.executable, "-m", "motionstreamer", "serve", "--ray", "--port", str(port),
                          "--max-streams", "2", "--sampling-steps", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert p.poll() is None and time.monotonic() < deadline, "serve --ray did not come up"
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(1)
        t = time.monotonic()
        if to_group:
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "motionstreamer serve --ray: SIGTERM: Serve shut down"
    for dump in ("SIGTERM received", "logging.cc", "Fatal Python error", "Traceback"):
        assert dump not in err, err[-2000:]
    assert time.monotonic() - t < 60
