"""The live service as a Ray Serve deployment: scale-out past one machine.

Each replica runs the same app (`create_app`) and owns one StreamingEngine (one GPU in production).
A WebSocket stream lives on the replica that accepted it; Ray's proxy routes new connections to the
least-loaded replica (a WebSocket is an ongoing request for its whole life), and autoscaling adds or
removes replicas on ongoing streams (`target_ongoing_requests`). A replica that dies takes its
streams with it: their clients see the connection drop (1006, no close frame: the process is gone)
and reconnect, which lands them on a survivor; Ray restarts the replica.

Run it with `motionstreamer serve --ray [--replicas N] [--max-replicas M] [--gpus-per-replica 1]`,
or on a cluster with `serve deploy motionstreamer/serve/deploy/serve_config.yaml` (the builder below
reads its `args`); on Kubernetes, KubeRay's RayService takes the same config.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage report leaves the machine

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray._private import worker as ray_worker  # noqa: E402

from motionstreamer.config import current_keys  # noqa: E402
from motionstreamer.serve.app import ServeConfig, create_app  # noqa: E402
from motionstreamer.serve.protocol import ServeLimits  # noqa: E402
from motionstreamer.serve.service import is_loopback  # noqa: E402

TOKEN_ENV = "MOTIONSTREAMER_TOKEN"


@serve.deployment(name="motionstreamer", graceful_shutdown_timeout_s=5, health_check_period_s=5)
@serve.ingress()
class MotionStreamerReplica:
    """One replica: one app, one engine. The app is built after the constructor, on the replica."""

    def __init__(self, config: dict):
        limits = ServeLimits(**config.pop("limits", {}))
        self.config = ServeConfig(**config, limits=limits)

    def __serve_build_asgi_app__(self):
        self._ms_app = create_app(self.config)
        return self._ms_app

    def check_health(self) -> None:
        sched = getattr(getattr(self, "_ms_app", None), "state", None)
        service = getattr(sched, "service", None)
        if service is not None and service.scheduler is not None and not service.scheduler.alive:
            raise RuntimeError("the engine thread is not running")


def pin_ray_to_loopback() -> None:
    """A local Ray whose processes talk over 127.0.0.1 only (by default its workers report the host's
    network address). Call before ray.init; workers inherit the environment."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"     # Ray's switch for "single machine, loopback"


def deployment_options(max_streams: int, replicas: int = 1, max_replicas: int | None = None,
                       gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
                       max_generate_jobs: int = 2) -> dict:
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    opts = {
        # streams + one-shot jobs + a few plain HTTP requests (/v1/info, /health) at once
        "max_ongoing_requests": max_streams + max_generate_jobs + 8,
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
    }
    if max_replicas is not None and max_replicas > replicas:
        # scale on ongoing streams: add a replica when they average 3/4 of one engine's streams
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                      "target_ongoing_requests": max(1, int(0.75 * max_streams)),
                                      "upscale_delay_s": 10, "downscale_delay_s": 300}
    else:
        opts["num_replicas"] = replicas
    return opts


def build(config: ServeConfig, replicas: int = 1, max_replicas: int | None = None, gpus_per_replica: float = 0.0,
          cpus_per_replica: float = 1.0):
    config.validate()
    opts = deployment_options(config.limits.max_streams, replicas, max_replicas, gpus_per_replica, cpus_per_replica,
                              config.limits.max_generate_jobs)
    return MotionStreamerReplica.options(**opts).bind(dataclasses.asdict(config))


def build_app(args: dict):
    """Application builder for `serve deploy` / `serve run motionstreamer.serve.ray_app:build_app`:
    args holds the ServeConfig fields (checkpoint, device, steps, lookahead, token, ...), `limits`
    (ServeLimits fields) and replicas, max_replicas, gpus_per_replica, cpus_per_replica. The token
    defaults to $MOTIONSTREAMER_TOKEN on the replicas (set it in runtime_env.env_vars)."""
    args = current_keys(dict(args or {}), ServeConfig.LEGACY_KEYS, "motionstreamer serve args", note=True)
    scale = {k: args.pop(k) for k in ("replicas", "max_replicas", "gpus_per_replica", "cpus_per_replica") if k in args}
    limits = ServeLimits(**args.pop("limits", {}))
    if "allowed_origins" in args:
        args["allowed_origins"] = tuple(args["allowed_origins"])
    args.setdefault("token", os.environ.get(TOKEN_ENV) or None)
    unknown = set(args) - {f.name for f in dataclasses.fields(ServeConfig)}
    if unknown:
        raise ValueError(f"unknown motionstreamer serve args {sorted(unknown)}")
    return build(ServeConfig(**args, limits=limits), **scale)


def _cluster_alive(started: bool, grace_s: float = 1.0) -> bool:
    """Whether the Ray processes this driver started are still up, once they have had `grace_s` to go: a
    SIGTERM to the whole process group (systemd's default, timeout(1)) stops them with the driver, and
    then Serve cannot be asked anything (the driver would wait a minute for the GCS). A cluster this
    driver joined is someone else's: assumed up."""
    if not started:
        return True
    time.sleep(grace_s)
    try:   # no public API says whether the local node's processes live
        return not ray_worker._global_node.dead_processes()
    except Exception:
        return True


class _Stop(Exception):
    """SIGTERM or SIGINT while `serve --ray` blocks: leave the blocking call and shut Serve down."""


def run_ray(config: ServeConfig, host: str, port: int, replicas: int = 1, max_replicas: int | None = None,
            gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0, address: str | None = None) -> int:
    """`motionstreamer serve --ray`: start (or join) Ray, deploy, block until SIGINT or SIGTERM, then shut
    Serve and Ray down and say so in one line."""
    if address is None:
        if is_loopback(host):
            pin_ray_to_loopback()
        ray.init(include_dashboard=False, **({"_node_ip_address": "127.0.0.1"} if is_loopback(host) else {}))
    else:
        ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    app = build(config, replicas, max_replicas, gpus_per_replica, cpus_per_replica)
    print(f"motionstreamer serve --ray: http://{host}:{port}/ ({replicas}"
          f"{f'-{max_replicas}' if max_replicas else ''} replicas, {config.limits.max_streams} streams each)",
          flush=True)
    received = []

    def stop(signum, frame):
        received.append(signal.Signals(signum).name)
        if len(received) == 1:      # the first one stops; more while shutting down are not a reason to dump
            raise _Stop

    # after ray.init: Ray's native fault handler holds SIGTERM in this process and answers it with a
    # stack dump; this handler replaces it
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    try:
        serve.run(app, name="motionstreamer", route_prefix="/", blocking=True)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        if _cluster_alive(started=address is None):
            try:    # the application first: serve.shutdown alone waits out its controller's 30 s timeout
                serve.delete("motionstreamer")
            finally:
                serve.shutdown()
        ray.shutdown()
    print(f"motionstreamer serve --ray: {received[0] if received else 'stopped'}: Serve shut down", flush=True)
    return 0
