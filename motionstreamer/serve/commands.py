"""CLI verb `serve`: the live service on uvicorn, or on Ray Serve with --ray."""
from __future__ import annotations

import logging
import os
import re

from motionstreamer.cli import CLIError, add_verb
from motionstreamer.runtime.sampler_args import add_sampler_args
from motionstreamer.serve.app import create_app
from motionstreamer.serve.protocol import ServeLimits
from motionstreamer.serve.service import SERVICE_TEACHER_STEPS, ServeConfig, is_loopback

TOKEN_ENV = "MOTIONSTREAMER_TOKEN"


def register(subparsers) -> None:
    p = add_verb(subparsers, "serve", cmd_serve,
                 "Serve text-to-motion streams over a WebSocket API (/v1/stream) with a browser app at /. Binds to "
                 "127.0.0.1 by default; any other address needs --token (or $MOTIONSTREAMER_TOKEN).")
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="model bundle; default: the embedded model")
    p.add_argument("--onnx", default=None, metavar="DIR",
                   help="an export-onnx folder: the engine's model calls run in onnxruntime on the CPU (a few "
                        "streams of a large model: docs/onnx.md); instead of --checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-streams", type=int, default=32, help="concurrent streams per engine (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto (bf16 on GPU, fp32 on CPU)")
    add_sampler_args(p, "sampling_steps", "head", "cfg_scale", "on_action_end", defaults=ServeConfig(), helps={
        "sampling_steps": f"diffusion sampling steps per latent (default: {SERVICE_TEACHER_STEPS} for the teacher, so "
                          "that a teacher streams 20+ clients on 2 CPU cores, 50 being the original "
                          "algorithm; a student: its default count)",
        "head": "teacher: the guided head (the original algorithm); student: the bundle's distilled few-step head "
                "(default: the bundle's choice; the embedded model's is its student)"})
    p.add_argument("--lookahead", type=int, default=2,
                   help="latents generated ahead of each stream's playback clock (default 2 = 267 ms)")
    p.add_argument("--token", default=None,
                   help=f"require this token on /v1/* (Authorization: Bearer TOKEN or ?token=TOKEN); default "
                        f"${TOKEN_ENV}; required when --host is not loopback")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="a browser Origin allowed besides the page's own (repeat; '*' allows any)")
    p.add_argument("--idle-timeout", type=float, default=300.0, help="seconds without a client message (default 300)")
    p.add_argument("--max-prompt-chars", type=int, default=300)
    p.add_argument("--max-backlog", type=int, default=64,
                   help="messages a slow client may leave unread before it is dropped (default 64 = 8.5 s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    r = p.add_argument_group("Ray Serve (scale-out)")
    r.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (needs `pip install ray[serve]`)")
    r.add_argument("--replicas", type=int, default=1, help="replicas at start (each owns one engine)")
    r.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale between --replicas and this on ongoing streams (default: no autoscaling)")
    r.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (1 in production)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0)
    r.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")


def config_from_args(args):
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise CLIError(f"--host {args.host} is not loopback: give --token TOKEN (or set ${TOKEN_ENV}) so that only "
                       "clients with the token can use the server")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in [1, 65535], got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    for flag, path in (("--checkpoint", args.checkpoint), ("--onnx", args.onnx)):
        if path is not None and not os.path.isdir(path):
            raise CLIError(f"{flag} {path}: not a directory")
    if args.onnx is not None and (args.checkpoint is not None or args.dtype != "auto" or args.device != "cpu"):
        raise CLIError("--onnx takes the models from the export and runs them on the CPU: leave out --checkpoint, "
                       "--dtype and --device")
    try:
        limits = ServeLimits(max_streams=args.max_streams, idle_timeout_s=args.idle_timeout,
                             max_prompt_chars=args.max_prompt_chars, max_backlog=args.max_backlog)
        config = ServeConfig(checkpoint=args.checkpoint, onnx=args.onnx, device=args.device,
                             dtype=None if args.dtype == "auto" else args.dtype, sampling_steps=args.sampling_steps,
                             head=args.head, cfg_scale=args.cfg_scale, on_action_end=args.on_action_end,
                             lookahead=args.lookahead, token=token, allowed_origins=tuple(args.allow_origin),
                             limits=limits, threads=args.threads)
        config.validate()
        # against the bundle (its default head, a student's step counts) before the server starts
        config.generation_config(config.bundle_config())
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e))
    return config


class RedactToken(logging.Filter):
    """Access logs print the request line; a ?token= in it must not reach the log."""
    pattern = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(self.pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.pattern.sub(r"\1***", record.msg)
        return True


def cmd_serve(args) -> int:
    config = config_from_args(args)
    if args.ray:
        from motionstreamer.serve.ray_app import run_ray  # Ray: only with --ray

        return run_ray(config, host=args.host, port=args.port, replicas=args.replicas, max_replicas=args.max_replicas,
                       gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
                       address=args.ray_address)
    try:
        import uvicorn

    except ImportError as e:
        raise CLIError(f"the service needs the 'serve' extra: pip install 'motionstreamer[serve]' ({e})")
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactToken())
    app = create_app(config)
    try:   # before the port is bound: a bad checkpoint or sampler settings are a clear error, not a failed startup
        app.state.service.load()
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    gen = app.state.service.scheduler.engine.config
    print(f"motionstreamer serve: http://{args.host}:{args.port}/ (WebSocket /v1/stream; "
          f"{config.limits.max_streams} streams, {gen.head} head, {gen.sampling_steps} sampling steps, look-ahead "
          f"{config.lookahead})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                ws_max_size=max(config.limits.max_message_bytes * 4, 65536))
    return 0
