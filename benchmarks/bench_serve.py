#!/usr/bin/env python
"""The live service under load: `python benchmarks/bench_serve.py [--clients 5,10,20,30,40] [--seconds 12]`.

Starts `motionstreamer serve` in a subprocess on 127.0.0.1 (the embedded model on CPU by default; with
`--model official-random` a random-weight bundle of the official size, which streams at the same speed
as the real weights), then runs N WebSocket clients in this one asyncio process for each N of the
ladder: every client streams and changes its prompt at random every 2-4 s. Per N it reports
  realtime        no underrun reported by the server and every client got >= 95% of its latents
  prompt_to_frame p50/p99 ms from sending a prompt to receiving the first latent that carries it
  prompt_to_play  p50/p99 ms to when that latent starts playing for a client that plays every latent
                  at 30 fps as soon as it can (what a viewer sees: the look-ahead is in it)
  jitter_p99_ms   99th percentile of a latent's arrival minus its slot on the ideal 7.5/s schedule
  server_cpu_pct  server process CPU (100 = one core) and server_rss_mb, over the measured window
and the largest N kept in real time. The ladder stops at the first N that is not. Bounded: at most
1024 clients, each level lasts warm-up + seconds. Writes benchmarks/results/<device>_serve_<date>.json
and .md. Timings depend on the machine being otherwise idle: rerun on a quiet one. `--onnx fp32|int8`
exports the model first (`motionstreamer export-onnx`) and serves it with `serve --onnx`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from motionstreamer.cli import add_deprecated_alias

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 4 / 30
MAX_CLIENTS = 1024


def _pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def random_official_bundle(directory: str) -> str:
    """Official-size TAE + t2m with random weights and the MiniLM text width (speed does not depend on
    the weights; the end latent is unreachable, so streams never end early)."""
    import torch

    from motionstreamer.checkpoints import save_bundle
    from motionstreamer.models.tae import CausalHumanTAE, TAEConfig
    from motionstreamer.models.transformer import T2MConfig, TextToMotionModel

    torch.manual_seed(0)
    save_bundle(directory, CausalHumanTAE(TAEConfig.official()), TextToMotionModel(T2MConfig.official(cond_dim=384)),
                torch.zeros(272), torch.ones(272), torch.full((16,), 1e6), text_encoder="minilm",
                description="random weights, official size (bench_serve)")
    return directory


class Server:
    def __init__(self, args, max_streams: int, checkpoint: str | None, onnx: str | None = None):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        cmd = [sys.executable, "-m", "motionstreamer", "serve", "--port", str(self.port), "--max-streams",
               str(max_streams), "--device", args.device, "--lookahead",
               str(args.lookahead), "--idle-timeout", "600", "--log-level", "warning"]
        if args.sampling_steps is not None:
            cmd += ["--sampling-steps", str(args.sampling_steps)]
        if args.head is not None:
            cmd += ["--head", args.head]
        if onnx:
            cmd += ["--onnx", onnx]
        elif checkpoint:
            cmd += ["--checkpoint", checkpoint]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start: "
                                   f"{self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}")
            time.sleep(0.25)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/info", timeout=10) as r:
            self.info = json.loads(r.read())
        import psutil
        self.ps = psutil.Process(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Client:
    def __init__(self, i: int, url: str, prompts: list[str], rng: random.Random):
        self.i, self.url, self.prompts, self.rng = i, url, prompts, rng
        self.arrivals = []          # (t, latent, frame, prompt, underruns)
        self.sent = []              # (t, prompt)
        self.closed = None

    async def run(self, stop: asyncio.Event):
        import websockets

        try:
            async with websockets.connect(f"{self.url}?seed={self.i}", max_queue=None) as ws:
                json.loads(await ws.recv())
                prompt = self.rng.choice(self.prompts)
                await ws.send(json.dumps({"type": "prompt", "text": prompt}))
                self.sent.append((time.monotonic(), prompt))
                next_change = time.monotonic() + self.rng.uniform(2, 4)
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), max(0.01, next_change - time.monotonic()))
                    except asyncio.TimeoutError:
                        prompt = self.rng.choice([p for p in self.prompts if p != prompt])
                        await ws.send(json.dumps({"type": "prompt", "text": prompt}))
                        self.sent.append((time.monotonic(), prompt))
                        next_change = time.monotonic() + self.rng.uniform(2, 4)
                        continue
                    m = json.loads(raw)
                    if m["type"] == "frames":
                        self.arrivals.append((time.monotonic(), m["latent"], m["frame"], m["prompt"], m["underruns"]))
        except Exception as e:   # a dropped client is a result, not a crash of the benchmark
            self.closed = f"{type(e).__name__}: {e}"

    def metrics(self, t0: float, t1: float) -> dict:
        arr = self.arrivals
        window = [a for a in arr if t0 <= a[0] <= t1]
        under_before = max([a[4] for a in arr if a[0] < t0], default=0)
        under_after = max([a[4] for a in window], default=under_before)
        # a player that starts each latent when it has arrived and the previous one has played (it
        # stalls when its buffer is empty): when a viewer sees each latent's first frame
        starts, prev = [], None
        for a in arr:
            prev = a[0] if prev is None else max(a[0], prev + PERIOD)
            starts.append(prev)
        lat, play = [], []
        for ts, p in self.sent:
            if not t0 <= ts <= t1:
                continue
            k = next((k for k, a in enumerate(arr) if a[0] >= ts and a[3] == p), None)
            if k is not None:
                lat.append((arr[k][0] - ts) * 1000)
                play.append((starts[k] - ts) * 1000)
        jit = []
        if len(window) > 4:
            base = statistics.median(a[0] - a[1] * PERIOD for a in window)
            jit = [abs(a[0] - a[1] * PERIOD - base) * 1000 for a in window]
        return {"latents": len(window), "underruns": under_after - under_before, "lat": lat, "play": play,
                "jitter": jit, "closed": self.closed}


async def run_level(url: str, n: int, seconds: float, warmup: float, prompts: list[str], server: Server, seed: int):
    rng = random.Random(seed)
    stop = asyncio.Event()
    clients = [Client(i, url, prompts, random.Random(rng.random())) for i in range(n)]
    tasks = []
    for c in clients:                                    # staggered joins over about one second
        tasks.append(asyncio.create_task(c.run(stop)))
        await asyncio.sleep(min(0.05, 1.0 / n))
    await asyncio.sleep(warmup)
    t0 = time.monotonic()
    cpu0 = server.ps.cpu_times()
    rss = [server.ps.memory_info().rss]
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.5)
        rss.append(server.ps.memory_info().rss)
    t1 = time.monotonic()
    cpu1 = server.ps.cpu_times()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    ms = [c.metrics(t0, t1) for c in clients]
    expected = (t1 - t0) / PERIOD
    lat = [x for m in ms for x in m["lat"]]
    play = [x for m in ms for x in m["play"]]
    jit = [x for m in ms for x in m["jitter"]]
    underruns = sum(m["underruns"] for m in ms)
    min_frac = min(m["latents"] / expected for m in ms)
    dropped = [m["closed"] for m in ms if m["closed"]]
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
    return {"case": f"serve_n{n}", "clients": n, "seconds": round(t1 - t0, 1),
            "realtime": underruns == 0 and min_frac >= 0.95 and not dropped,
            "underruns": underruns, "min_latent_fraction": round(min_frac, 3), "dropped": len(dropped),
            "prompt_changes": len(lat),
            "prompt_to_frame_p50_ms": _pct(lat, 50), "prompt_to_frame_p99_ms": _pct(lat, 99),
            "prompt_to_play_p50_ms": _pct(play, 50), "prompt_to_play_p99_ms": _pct(play, 99),
            "jitter_p99_ms": _pct(jit, 99), "server_cpu_pct": round(cpu, 1),
            "server_rss_mb": round(max(rss) / 2**20, 1)}


def bench(args) -> tuple[dict, list[dict]]:
    levels = [int(x) for x in args.clients.split(",")]
    if not levels or min(levels) < 1 or max(levels) > MAX_CLIENTS:
        raise SystemExit(f"--clients must be a comma list of 1..{MAX_CLIENTS}")
    tmp = None
    checkpoint = args.checkpoint
    if args.model == "official-random":
        tmp = tempfile.TemporaryDirectory()
        checkpoint = random_official_bundle(os.path.join(tmp.name, "bundle"))
    onnx = None
    if args.onnx:   # the model exported as a user would (export-onnx), served with serve --onnx
        tmp = tmp or tempfile.TemporaryDirectory()
        onnx = os.path.join(tmp.name, "onnx")
        cmd = [sys.executable, "-m", "motionstreamer", "export-onnx", "--out", onnx]
        cmd += ["--checkpoint", checkpoint] if checkpoint else []
        cmd += ["--quantize", "int8"] if args.onnx == "int8" else []
        print(f"[bench_serve] exporting ({args.onnx}) ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    server = Server(args, max(levels), checkpoint, onnx)
    rows = []
    try:
        url = f"ws://127.0.0.1:{server.port}/v1/stream"
        prompts = server.info["example_prompts"]
        for n in levels:
            print(f"[bench_serve] {n} clients ...", file=sys.stderr, flush=True)
            row = asyncio.run(run_level(url, n, args.seconds, args.warmup, prompts, server, seed=n))
            rows.append(row)
            print(f"[bench_serve]   realtime={row['realtime']} underruns={row['underruns']} "
                  f"p99 prompt->frame {row['prompt_to_frame_p99_ms']} ms, cpu {row['server_cpu_pct']}%",
                  file=sys.stderr, flush=True)
            if not row["realtime"] and not args.keep_going:
                break
    finally:
        server.stop()
        if tmp is not None:
            tmp.cleanup()
    ok = [r for r in rows if r["realtime"]]
    best = max(ok, key=lambda r: r["clients"]) if ok else None
    summary = {"model": args.model if args.model != "embedded" else "embedded default model",
               "checkpoint": args.checkpoint, "device": args.device, "sampling_steps": args.sampling_steps,
               "head": args.head, "lookahead": args.lookahead, "runtime": server.info.get("runtime", "torch"),
               "onnx": args.onnx,
               "server_command": " ".join(server.cmd[1:]).replace(str(ROOT) + "/", ""),
               "largest_realtime_clients": best["clients"] if best else 0,
               "at_largest": {k: best[k] for k in ("prompt_to_frame_p50_ms", "prompt_to_frame_p99_ms",
                                                   "prompt_to_play_p99_ms", "jitter_p99_ms", "server_cpu_pct",
                                                   "server_rss_mb")} if best else None,
               "command": "python benchmarks/bench_serve.py " + " ".join(args.argv)}
    return summary, rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="5,10,20,30,40,50,64", help="comma list of client counts (ladder)")
    ap.add_argument("--seconds", type=float, default=12.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0)
    steps = ap.add_argument("--sampling-steps", type=int, default=None,
                            help="sampling steps (default: the server's: 10 for the teacher, a student's own count)")
    ap.add_argument("--head", choices=("teacher", "student"), default=None,
                    help="the head the server runs (default: the bundle's default head)")
    add_deprecated_alias(ap, "--steps", steps)
    ap.add_argument("--lookahead", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", choices=("embedded", "official-random"), default="embedded")
    ap.add_argument("--checkpoint", default=None, help="a bundle directory instead of --model")
    ap.add_argument("--onnx", choices=("fp32", "int8"), default=None,
                    help="export the model (export-onnx, int8: --quantize int8) and serve it with serve --onnx")
    ap.add_argument("--keep-going", action="store_true", help="run every level even after one fails")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--no-write", action="store_true")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    summary, rows = bench(args)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from run import device_info, markdown_table, write_results
    info = device_info(torch.device("cuda" if args.device.startswith("cuda") else "cpu"))
    info.update(summary)
    print(json.dumps(info, indent=1))
    print(markdown_table(rows))
    if not args.no_write:
        onnx = f"_onnx_{args.onnx}" if args.onnx else ""
        write_results(args.out, info, rows,
                      f"serve_{'official' if args.model == 'official-random' else 'embedded'}{onnx}",
                      f"serve ({info['model']}, {args.head or 'default'} head, {info['runtime']}"
                      f"{' ' + args.onnx if args.onnx else ''}, "
                      f"{args.sampling_steps or 'default'} steps)",
                      f"largest real-time client count: **{info['largest_realtime_clients']}**\n\n"
                      f"`{info['command']}`\n\n")
    return 0


def run_all(device, small: bool, quick: bool) -> list[dict]:
    """The 'external' case of benchmarks/run.py: a short ladder (quick: 2 clients for 3 s)."""
    argv = ["--device", "cuda" if device.type == "cuda" else "cpu", "--no-write"]
    if quick:
        argv += ["--clients", "2", "--seconds", "3", "--warmup", "1"]
    elif device.type == "cuda":
        argv += ["--model", "official-random", "--sampling-steps", "50", "--clients", "64,128,256,512,768"]
    else:
        argv += ["--clients", "5,10,20,30", "--seconds", "8"]
    args = parser().parse_args(argv)
    args.argv = argv
    summary, rows = bench(args)
    for r in rows:
        r["largest_realtime_clients"] = summary["largest_realtime_clients"]
    return rows


if __name__ == "__main__":
    sys.exit(main())
