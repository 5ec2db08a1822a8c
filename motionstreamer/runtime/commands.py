"""CLI verbs `generate` and `stream`."""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from motionstreamer import FEATURE_DIM, FPS, NUM_JOINTS
from motionstreamer.cli import CLIError, add_verb, check_output
from motionstreamer.io.commands import add_export_args, output_files, write_outputs
from motionstreamer.runtime.engine import GenerationConfig
from motionstreamer.runtime.loading import load_models, load_onnx_models
from motionstreamer.runtime.policy import NonFiniteMotionError, check_prompt, check_seed, make_goal
from motionstreamer.runtime.sampler_args import add_sampler_args, generation_config
from motionstreamer.runtime.session import StreamingSession, seconds_to_latents

MAX_SECONDS = 600.0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help=f"output prefix, anywhere (~ expanded): writes PREFIX.npy (T,{FEATURE_DIM} de-normalised) "
                        f"and PREFIX_joints.npy (T,{NUM_JOINTS},3: the joints the video and every export show)")
    p.add_argument("--out-dir", default=".", help="folder a relative --out is resolved in (default: current folder)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="model directory (motionstreamer bundle); default: the embedded model")
    p.add_argument("--onnx", default=None, metavar="DIR",
                   help="an export-onnx folder: run its graphs in onnxruntime instead of the PyTorch models (CPU; "
                        "about 2x faster per latent for the embedded model's student on 2 cores: docs/onnx.md)")
    p.add_argument("--seed", type=int, default=0)
    add_sampler_args(p, "cfg_scale", "temperature", "sampling_steps", "head", "sampler", "end_threshold",
                     helps={"sampling_steps": "diffusion sampling steps per latent (default: 50, the original, for "
                                              "the teacher; a student's default count, one it supports)",
                            "head": "teacher: the guided head, the exact original algorithm; student: the bundle's "
                                    "distilled few-step head, no guidance rows (default: the bundle's choice)"})
    p.add_argument("--max-seconds", type=float, default=20.0, help="hard cap on the motion length")
    add_sampler_args(p, "on_action_end")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto (bf16 on GPU, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default 1 on CPU: the per-latent ops are small, and extra "
                        "threads spin-wait; measured 22 ms vs 2.8 s per latent on a busy 2-core machine)")
    p.add_argument("--quiet", action="store_true")
    add_export_args(p)


def register(subparsers) -> None:
    g = add_verb(subparsers, "generate", cmd_generate, "Generate one motion from a text prompt with the streaming "
                                                      "engine.")
    g.add_argument("text", help="motion description, e.g. 'a person walks forward'")
    _add_common(g)

    s = add_verb(subparsers, "stream", cmd_stream, "Stream one continuous motion from prompts given in order "
                                                   "(--prompt 'TEXT' or 'TEXT@SECONDS'), or read live from stdin, "
                                                   "one prompt per line.")
    s.add_argument("--prompt", action="append", default=[], metavar="TEXT[@SECONDS]",
                   help="a prompt, optionally with its duration in seconds after a final '@' (other '@' are "
                        "text; '@@' is a literal '@'); repeat for more")
    s.add_argument("--stdin", action="store_true",
                   help="read prompts line by line from standard input while streaming (live)")
    s.add_argument("--realtime", action="store_true",
                   help="pace generation at 30 fps (useful with --stdin)")
    s.add_argument("--jsonl", action="store_true",
                   help="print every 4-frame chunk as a JSON line (joints) on stdout")
    s.add_argument("--goal", action="append", default=[], metavar="X,Z[,HEADING][@SECONDS]",
                   help="steer the character to the floor point X,Z (metres; the stream starts at the origin facing "
                        "+Z, +X on its left), optionally facing HEADING there (radians, 0 = +Z) within SECONDS; repeat "
                        "for waypoints, each set when the one before is reached (any model: the root motion is "
                        "steered, docs/goals.md)")
    add_sampler_args(s, "goal_tolerance", "goal_steering")
    _add_common(s)


_LITERAL_AT = "\x00"   # stands for an escaped '@@' while the duration is split off


def parse_prompt(spec: str) -> tuple[str, float | None]:
    """'TEXT@SECONDS' -> (TEXT, SECONDS). Only a final '@' followed by a number is a duration: other
    '@' stay text ('email me@home'), and '@@' is a literal '@' ('meet@@5' is the text 'meet@5')."""

    escaped = spec.replace("@@", _LITERAL_AT)
    text, sep, dur = escaped.rpartition("@")
    if not sep or (dur.strip() and not re.match(r"\s*[-+]?(\d|\.\d|inf|nan)", dur, re.IGNORECASE)):
        return spec.replace("@@", "@"), None
    text = text.replace(_LITERAL_AT, "@")
    try:
        seconds = float(dur)
    except ValueError:
        raise CLIError(f"bad prompt duration in {spec!r}: {dur!r} is not a number of seconds "
                       f"(write '@@' for a literal '@')")
    if not 0 < seconds <= MAX_SECONDS:
        raise CLIError(f"bad prompt duration in {spec!r}: must be in (0, {MAX_SECONDS:g}] seconds")
    return text, seconds


def parse_goal(spec: str) -> tuple[float, float, float | None, float | None]:
    """'X,Z[,HEADING][@SECONDS]' -> (x, z, heading, seconds), checked as the engine checks a goal
    (finite numbers in range); CLIError naming the flag's value otherwise."""
    where, sep, secs = spec.partition("@")
    parts = where.split(",")
    try:
        if len(parts) not in (2, 3) or (sep and not secs.strip()):
            raise ValueError("expected X,Z[,HEADING][@SECONDS], e.g. 3,2 or 3,2,1.57@4")
        try:
            values = [float(p) for p in parts] + [float(secs) if sep else None]
        except ValueError:
            raise ValueError("X, Z, HEADING and SECONDS must be numbers") from None
        x, z, heading, seconds = values[0], values[1], values[2] if len(parts) == 3 else None, values[-1]
        make_goal(x, z, heading, seconds)
    except ValueError as e:
        raise CLIError(f"bad --goal {spec!r}: {e}") from None
    return x, z, heading, seconds


def resolve_output_prefix(out: str, out_dir: str = ".") -> Path:
    """--out PREFIX as the user wrote it (their own argument: anywhere, ~ expanded; relative to
    --out-dir). Refused: a prefix with no file name ("", ".", "..", "dir/") or naming a folder."""
    target = Path(out_dir).expanduser() / Path(out).expanduser()
    if not out.strip() or out.rstrip().endswith(("/", "\\")) or Path(out).name in ("", ".", ".."):
        raise CLIError(f"--out {out!r} has no file name; give a prefix such as out/walk (writes out/walk.npy, ...)")
    if target.is_dir():
        raise CLIError(f"--out {out!r} is a folder; give a prefix inside it, e.g. {str(Path(out) / 'walk')!r}")
    return target.resolve()


def _config(args):
    if not 0 < args.max_seconds <= MAX_SECONDS:
        raise CLIError(f"--max-seconds must be in (0, {MAX_SECONDS:g}], got {args.max_seconds}")
    return generation_config(args, GenerationConfig(max_latents=seconds_to_latents(args.max_seconds)))


def _run(args, prompts: list[tuple[str, float | None]], live_stdin: bool = False, goals: list | None = None) -> int:
    try:
        prompts = [(check_prompt(text), seconds) for text, seconds in prompts]
        check_seed(args.seed)
    except ValueError as e:
        raise CLIError(str(e))
    prefix = resolve_output_prefix(args.out, args.out_dir)
    for _, path in output_files(prefix, args):   # before the model runs: an unwritable --out must not cost the work
        check_output(path, "--out")
    try:
        config = _config(args)
        config.validate()
    except ValueError as e:
        raise CLIError(str(e))
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.threads is not None or args.device in ("cpu", "auto") and not torch.cuda.is_available():
        torch.set_num_threads(args.threads or 1)
    if args.onnx and (args.checkpoint or args.dtype != "auto" or args.device not in ("auto", "cpu")):
        raise CLIError("--onnx takes the models from the export and runs them on the CPU: leave out --checkpoint, "
                       "--dtype and --device")
    try:
        backend = None
        if args.onnx:
            bundle, text_encoder, desc, backend = load_onnx_models(args.onnx, config, threads=args.threads or 1)
        else:
            bundle, text_encoder, desc = load_models(args.checkpoint, args.device, args.dtype)
        log(f"model: {desc}")
        # live JSON chunks (stream --jsonl) are foot-cleaned causally; the files offline, below
        clean_live = args.clean_feet and getattr(args, "jsonl", False)
        # ValueError also for --head/--steps the bundle lacks (a student's supported step counts)
        session = StreamingSession(bundle, text_encoder, config=config, seed=args.seed, clean_feet=clean_live,
                                   backend=backend)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e))
    for text, seconds in prompts:
        session.push_text(text, duration=seconds, after_current=True)
    goals = list(goals or [])
    if goals:
        try:
            session.set_goal(*goals.pop(0))
        except ValueError as e:
            raise CLIError(f"--goal: {e}")
    with StopSignals() as stop:
        chunks, gen_time, first_latency, ended, queued = _stream(session, args, live_stdin, log, stop, goals)
    if not chunks:
        if ended:
            print(f"motionstreamer: {ended} before any frame was generated; nothing written", file=sys.stderr)
            return stop.exit_code or 0
        if not prompts and not queued:
            raise CLIError("no prompt was given: standard input ended before a prompt line (write one prompt "
                           "per line)")
        raise CLIError("no frames were generated (the first action ended immediately); try another seed")
    features = torch.cat([c.features.cpu() for c in chunks]).numpy().astype(np.float32)
    motion_seconds = features.shape[0] / FPS
    for ev in session.events:
        log(f"  latent {ev.latent_index:4d}: {ev.kind} ({ev.prompt!r})")
    log(f"generated {features.shape[0]} frames ({len(chunks)} latents, {motion_seconds:.2f} s of motion) in "
        f"{gen_time:.2f} s; first-latent latency {first_latency * 1000:.1f} ms; real-time factor "
        f"{motion_seconds / max(gen_time, 1e-9):.1f}x")
    title = " / ".join(t for t, _ in prompts) if prompts else "stream"
    written = write_outputs(prefix, features, args, title, log)
    for path in written:
        log(f"wrote {path}")
    if ended:   # said even with --quiet: the files hold a stream cut short
        print(f"motionstreamer: {ended}: saved the {features.shape[0]} frames generated so far to {written[0]} "
              f"and the other outputs", file=sys.stderr)
    return stop.exit_code or 0


def _stream(session, args, live_stdin: bool, log, stop: "StopSignals", waypoints: list | None = None):
    """Step the session until it finishes (and, with --stdin, until stdin closes), printing JSON lines
    and pacing at 30 fps as asked; each goal reached sets the next of `waypoints`. Stops early, keeping
    what was generated, on SIGINT/SIGTERM (`stop`) or when stdout closes under --jsonl. Returns (chunks,
    generation seconds, first-latent latency, why it stopped early or None, prompts read from stdin)."""

    lock = threading.Lock()
    reader = None
    queued = 0
    if live_stdin:
        def on_line(line: str) -> None:
            nonlocal queued
            with lock:
                try:
                    session.push_text(line)
                    queued += 1
                    log(f"prompt queued: {line!r}")
                except (ValueError, TypeError) as e:
                    log(f"ignored prompt: {e}")
        stdin = functools.partial(os.read, sys.stdin.fileno())
        reader = threading.Thread(target=read_prompt_lines, args=(stdin, on_line, log), daemon=True)
        reader.start()
    chunks = []
    t0 = time.perf_counter()
    first_latency = None
    gen_time = 0.0
    due = 0.0      # --realtime: when the frames out so far have played; never behind the step that starts
    goals_reached = 0
    while stop.signal is None:
        with lock:
            finished = session.finished
        if finished:
            if reader is not None and reader.is_alive():
                time.sleep(0.05)
                continue
            break
        ts = time.perf_counter()
        with lock:
            try:
                chunk = session.step()
            except NonFiniteMotionError as e:
                raise CLIError(f"{e}; nothing written. Check --cfg-scale/--temperature and the checkpoint") from None
        gen_time += time.perf_counter() - ts
        reached = sum(e.kind == "goal_reached" for e in session.events)
        if waypoints and reached > goals_reached:      # the next waypoint (a finished stream resumes)
            goals_reached = reached
            log(f"goal reached; next goal {waypoints[0][:2]}")
            with lock:
                session.set_goal(*waypoints.pop(0))
        if chunk is None:
            continue
        if first_latency is None:
            first_latency = time.perf_counter() - t0
        chunks.append(chunk)
        if getattr(args, "jsonl", False) and not print_jsonl(
                {"start_frame": chunk.start_frame, "prompt": chunk.prompt,
                 "joints": np.round(chunk.joints.cpu().numpy(), 5).tolist()}):
            return chunks, gen_time, first_latency, "stdout closed", queued
        if getattr(args, "realtime", False):
            # a playback clock that waits while the stream is idle or late (a first prompt typed after a
            # while, a slow step) instead of bursting through the motion it is behind on
            due = max(due, ts) + chunk.features.shape[0] / FPS
            time.sleep(max(0.0, due - time.perf_counter()))
    return chunks, gen_time, first_latency, stop.signal, queued


# ----------------------------------------------------------------------------- live input and output
MAX_LINE_BYTES = 16 * 1024     # a prompt line (prompts are at most MAX_PROMPT_CHARS characters)


def read_prompt_lines(read, on_line, log, max_bytes: int = MAX_LINE_BYTES) -> None:
    """Call on_line(text) for every non-blank line read with read(n) -> bytes (b"" at the end), e.g.
    functools.partial(os.read, 0). A line that is not UTF-8, or longer than max_bytes (never held
    whole in memory: `< /dev/zero` stays bounded), is reported through log and skipped; reading goes
    on after it. Reading the file descriptor directly, not sys.stdin, leaves no lock held by this
    thread when the interpreter exits while it waits."""
    buf, skipping = b"", False
    while True:
        data = read(65536)
        buf += data
        lines = buf.split(b"\n")
        buf = lines.pop() if data else b""      # the unfinished last piece (all of it at the end)
        if not data and lines == [b""]:
            lines = []
        for line in lines:
            if skipping:                        # the end of a line already reported as too long
                skipping = False
                continue
            _take_line(line, on_line, log, max_bytes)
        if len(buf) > max_bytes:
            if not skipping:
                log(f"ignored a line longer than {max_bytes} bytes (one prompt per line)")
            buf, skipping = b"", True
        if not data:
            return


def _take_line(line: bytes, on_line, log, max_bytes: int) -> None:
    if len(line) > max_bytes:
        log(f"ignored a line longer than {max_bytes} bytes (one prompt per line)")
        return
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        log(f"ignored a line that is not UTF-8 text (byte 0x{line[e.start]:02x} at position {e.start})")
        return
    if text:
        on_line(text)


def print_jsonl(record: dict) -> bool:
    """One JSON line on stdout; False when stdout is closed (a reader that went away ends the stream).
    Non-finite numbers are refused (bare NaN is not JSON)."""
    try:
        print(json.dumps(record, allow_nan=False), flush=True)
        return True
    except BrokenPipeError:
        # stdout's buffer still holds the line: point the descriptor at /dev/null so that flushing
        # at exit does not raise again (the recipe of Python's signal documentation)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return False


class StopSignals:
    """While active, the first SIGINT or SIGTERM only asks to stop (`signal` is its name), so that the
    work done so far can be saved; a second one acts as usual (Ctrl-C again aborts). Outside the main
    thread signals cannot be caught and this does nothing."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)

    def __init__(self):
        self.signal: str | None = None
        self.exit_code: int | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal, self.exit_code = f"interrupted ({signal.Signals(signum).name})", 128 + signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def cmd_generate(args) -> int:
    return _run(args, [(args.text, None)])


def cmd_stream(args) -> int:
    if not args.prompt and not args.stdin:
        raise CLIError("give at least one --prompt, or --stdin to read prompts live")
    prompts = [parse_prompt(p) for p in args.prompt]
    goals = [parse_goal(g) for g in args.goal]
    return _run(args, prompts, live_stdin=args.stdin, goals=goals)
