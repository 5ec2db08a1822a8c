"""The CLI's guards and the stream policy (runtime/commands.py, runtime/policy.py) held at both sides of
every bound, with the limits written here as the documented numbers (never imported from the code under
test), and every check fed one bad element among good ones. Pure functions and argument errors: no model
runs, so the file takes seconds."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from motionstreamer.cli import CLIError, build_parser, main
from motionstreamer.runtime import commands, policy
from motionstreamer.runtime.engine import FrameChunk

PROMPT_LIMIT = 1000            # docs/usage.md: a prompt is at most 1000 characters
SECONDS_LIMIT = 600            # a prompt's duration and --max-seconds: (0, 600]


def parsed(*argv):
    return build_parser("generate").parse_args(["generate", "a person walks", "--out", "x", *argv])


# ----------------------------------------------------------------------------- prompts
def test_prompt_length_limit_on_both_sides():
    assert policy.check_prompt("w" * PROMPT_LIMIT) == "w" * PROMPT_LIMIT
    with pytest.raises(ValueError, match=r"too long \(1001 characters, at most 1000\)"):
        policy.check_prompt("w" * (PROMPT_LIMIT + 1))
    # a caller's tighter bound, and a looser one that cannot lift the cap
    assert policy.check_prompt("w" * 300, max_chars=300) == "w" * 300
    with pytest.raises(ValueError, match="at most 300"):
        policy.check_prompt("w" * 301, max_chars=300)
    with pytest.raises(ValueError, match="at most 1000"):
        policy.check_prompt("w" * (PROMPT_LIMIT + 1), max_chars=5000)
    # the limit counts the collapsed text: 1997 characters typed, 999 after the whitespace runs collapse
    assert len(policy.check_prompt("   ".join(["w"] * 500))) == 999


@pytest.mark.parametrize("text,what", [
    ("a person walks\udc80", "byte 0x80 at position 14"),          # the first byte a surrogate escape holds
    ("a person walks\udcff", "byte 0xff at position 14"),          # the last
    ("a person\udc7f walks", "character '\\udc7f' at position 8"),  # one below: a lone surrogate, no byte
    ("a person\udd00 walks", "character '\\udd00' at position 8"),  # one above
])
def test_undecodable_prompt_names_the_byte_or_character(text, what):
    with pytest.raises(ValueError, match="not valid UTF-8 text") as e:
        policy.check_prompt(text)
    assert what in str(e.value)


@pytest.mark.parametrize("ch", ["\x00", "\x1b", "\x7f", "\x85", "\x9f"])
def test_one_control_character_among_good_text_is_refused_at_its_position(ch):
    text = "a person walks" + ch + "forward"
    with pytest.raises(ValueError, match=rf"control character \(U\+{ord(ch):04X} at position 14\)"):
        policy.check_prompt(text)


def test_ordinary_whitespace_collapses_and_other_types_are_refused():
    assert policy.check_prompt("\ta  person\nwalks\r\v\f") == "a person walks"
    for bad in ("", "   ", "\t\n"):
        with pytest.raises(ValueError, match="prompt is empty"):
            policy.check_prompt(bad)
    with pytest.raises(TypeError, match="prompt must be a string, got bytes"):
        policy.check_prompt(b"walk")


# ----------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed,ok", [(-(2 ** 63), True), (-(2 ** 63) - 1, False), (2 ** 64 - 1, True),
                                     (2 ** 64, False), (0, True)])
def test_seed_range_is_what_torch_takes_inclusive(seed, ok):
    if ok:
        assert policy.check_seed(seed) == seed
        torch.Generator().manual_seed(seed)          # the reference: torch takes it
    else:
        with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*64 - 1\], got "):
            policy.check_seed(seed)
        with pytest.raises((RuntimeError, ValueError)):
            torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed,ok", [(0, True), (-1, False), (2 ** 63 - 1, True), (2 ** 63, False)])
def test_service_seed_range_is_a_signed_64_bit_non_negative_integer(seed, ok):
    bounds = (0, 2 ** 63 - 1)
    assert policy.SERVICE_SEED_RANGE == bounds
    if ok:
        assert policy.check_seed(seed, bounds) == seed
    else:
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63 - 1\]"):
            policy.check_seed(seed, bounds)


def test_seed_types():
    assert policy.check_seed(np.int64(5)) == 5 and type(policy.check_seed(np.int64(5))) is int
    for bad in (True, 3.0, "3", None):
        with pytest.raises(ValueError, match="seed must be an integer"):
            policy.check_seed(bad)


# ----------------------------------------------------------------------------- the window, the end of an action
def test_window_slides_exactly_when_the_next_latent_would_not_fit():
    # a block of 78 positions: the text token and 77 latents; the 78th latent needs a slide first
    assert not policy.window_full(76, 78) and policy.window_full(77, 78) and policy.window_full(78, 78)
    history = list(range(77))
    assert policy.slide(history, 78, keep=10) == list(range(67, 77))
    assert policy.slide(history[:76], 78, keep=10) == history[:76]


def test_action_end_is_strictly_within_the_threshold_and_after_the_minimum():
    end = torch.zeros(16)
    near = torch.zeros(16)
    near[3] = 0.999
    at = torch.zeros(16)
    at[3] = 1.0
    assert policy.is_action_end(near, end, 1.0, action_latents=4, min_action_latents=4)
    assert not policy.is_action_end(at, end, 1.0, action_latents=4, min_action_latents=4)     # strict <
    assert not policy.is_action_end(end, end, 1.0, action_latents=3, min_action_latents=4)    # too early
    assert policy.is_action_end(end, end, 1.0, action_latents=5, min_action_latents=4)
    # the distance is the L2 norm of the whole latent, not one component
    spread = torch.full((16,), 0.3)                                                           # |.| = 1.2
    assert not policy.is_action_end(spread, end, 1.0, action_latents=4, min_action_latents=4)
    assert policy.is_action_end(spread, end, 1.25, action_latents=4, min_action_latents=4)


def chunk(features, joints, latent=7):
    return FrameChunk(stream_id=0, latent_index=latent, start_frame=4 * latent, prompt="walk",
                       features=features, joints=joints, latent=torch.zeros(16))


@pytest.mark.parametrize("where", ["features first", "features last", "joints first", "joints last"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_value_among_good_ones_is_caught(where, bad):
    features, joints = torch.randn(4, 272), torch.randn(4, 22, 3)
    policy.check_finite_chunk(chunk(features, joints))          # all good: no error
    target = features if where.startswith("features") else joints
    target.view(-1)[0 if where.endswith("first") else -1] = bad
    with pytest.raises(policy.NonFiniteMotionError, match=r"non-finite motion \(NaN/inf\) at latent 7"):
        policy.check_finite_chunk(chunk(features, joints))


# ----------------------------------------------------------------------------- durations and --max-seconds
@pytest.mark.parametrize("spec,seconds", [("walk@600", 600.0), ("walk@599.99", 599.99), ("walk@0.001", 0.001)])
def test_prompt_duration_inside_the_range(spec, seconds):
    assert commands.parse_prompt(spec) == ("walk", seconds)


@pytest.mark.parametrize("spec", ["walk@600.01", "walk@601", "walk@0", "walk@-0.001"])
def test_prompt_duration_one_step_outside_the_range(spec):
    with pytest.raises(CLIError, match=r"must be in \(0, 600\] seconds"):
        commands.parse_prompt(spec)


def test_prompt_at_signs():
    assert commands.parse_prompt("meet@@5") == ("meet@5", None)
    assert commands.parse_prompt("meet@@5@2") == ("meet@5", 2.0)
    assert commands.parse_prompt("a@b@@c@3") == ("a@b@c", 3.0)
    assert commands.parse_prompt("email me@home") == ("email me@home", None)
    with pytest.raises(CLIError, match="is not a number of seconds"):
        commands.parse_prompt("walk@4x")


@pytest.mark.parametrize("flag,ok", [("600", True), ("600.01", False), ("0.01", True), ("0", False),
                                     ("-1", False)])
def test_max_seconds_on_both_sides(flag, ok):
    args = parsed("--max-seconds", flag)
    if ok:
        config = commands._config(args)
        assert config.max_latents == max(1, round(float(flag) * 30 / 4))     # 30 fps, 4 frames a latent
    else:
        with pytest.raises(CLIError, match=r"--max-seconds must be in \(0, 600\]"):
            commands._config(args)


def test_documented_defaults():
    """docs/usage.md: a generation stops after 20 s unless told; seed 0; the embedded model."""
    args = parsed()
    assert (args.max_seconds, args.seed, args.checkpoint, args.threads) == (20.0, 0, None, None)
    assert commands._config(args).max_latents == 150


# ----------------------------------------------------------------------------- --threads, --out
@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("threads", ["1", "3"])
def test_threads_accepted_from_one_and_applied(threads, tmp_path, capsys, keep_threads):
    """A valid --threads passes the guard (the run then stops at the missing checkpoint, before any model)
    and is what torch uses; without --threads a CPU run takes one thread."""
    code, err = run_cli(["generate", "a person walks", "--out", tmp_path / "x", "--threads", threads,
                         "--checkpoint", tmp_path / "none", "--device", "cpu"], capsys)
    assert code == 2 and "not found" in err and "--threads" not in err, err
    assert torch.get_num_threads() == int(threads)
    torch.set_num_threads(2)
    code, err = run_cli(["generate", "a person walks", "--out", tmp_path / "x", "--checkpoint", tmp_path / "none",
                         "--device", "cpu"], capsys)
    assert code == 2 and "not found" in err and torch.get_num_threads() == 1


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_below_one_are_refused(threads, tmp_path, capsys, keep_threads):
    code, err = run_cli(["generate", "a person walks", "--out", tmp_path / "x", "--threads", threads,
                         "--checkpoint", tmp_path / "none"], capsys)
    assert code == 2 and f"--threads must be >= 1, got {threads}" in err


@pytest.mark.parametrize("out", ["", "  ", ".", "..", "sub/", "sub\\", "a/.."])
def test_out_without_a_file_name_is_refused(out, tmp_path):
    with pytest.raises(CLIError, match="has no file name"):
        commands.resolve_output_prefix(out, str(tmp_path))


def test_out_prefix_is_resolved_in_out_dir_unless_absolute(tmp_path):
    assert commands.resolve_output_prefix("walk", str(tmp_path)) == (tmp_path / "walk").resolve()
    assert commands.resolve_output_prefix("sub/walk", str(tmp_path)) == (tmp_path / "sub" / "walk").resolve()
    assert commands.resolve_output_prefix(str(tmp_path / "abs"), "/nonexistent") == (tmp_path / "abs").resolve()
    (tmp_path / "d").mkdir()
    with pytest.raises(CLIError, match="is a folder"):
        commands.resolve_output_prefix("d", str(tmp_path))


# ----------------------------------------------------------------------------- live input and output
def reader(*pieces):
    it = iter([*pieces, b""])
    return lambda n: next(it)


def test_line_limit_on_both_sides():
    got, logs = [], []
    commands.read_prompt_lines(reader(b"0123456789\n", b"0123456789A\n", b"ok\n"), got.append, logs.append,
                               max_bytes=10)
    assert got == ["0123456789", "ok"] and logs == ["ignored a line longer than 10 bytes (one prompt per line)"]


def test_an_unfinished_line_over_the_limit_is_dropped_as_it_arrives():
    """Held back while it has no newline: at max_bytes it is kept, one byte over it is dropped (with its
    rest, whenever that comes), and the next line is read."""
    got, logs = [], []
    commands.read_prompt_lines(reader(b"0123456789", b"\n", b"0123456789A", b"BC\nok\n"), got.append, logs.append,
                               max_bytes=10)
    assert got == ["0123456789", "ok"] and len(logs) == 1 and "longer than 10 bytes" in logs[0]


def test_lines_split_across_reads_blank_lines_and_a_last_line_without_newline():
    got, logs = [], []
    commands.read_prompt_lines(reader(b"a pers", b"on walks\n\n  \n", b"\xe2\x82", b"\xac sign\nlast"), got.append,
                               logs.append)
    assert got == ["a person walks", "\u20ac sign", "last"] and logs == []


def test_an_undecodable_line_among_good_ones_is_named_and_skipped():
    got, logs = [], []
    commands.read_prompt_lines(reader(b"walk\nab\xc3(\njump\n"), got.append, logs.append)
    assert got == ["walk", "jump"]
    assert logs == ["ignored a line that is not UTF-8 text (byte 0xc3 at position 2)"]


def test_jsonl_refuses_a_non_finite_record_and_prints_nothing(capsys):
    """Bare NaN is not JSON: one bad number among good ones raises, and no partial line goes out."""
    assert commands.print_jsonl({"start_frame": 0, "joints": [[0.0, 1.0]]})
    assert json.loads(capsys.readouterr().out) == {"start_frame": 0, "joints": [[0.0, 1.0]]}
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not JSON compliant"):
            commands.print_jsonl({"start_frame": 4, "joints": [[0.0, 1.0], [2.0, bad]]})
        assert capsys.readouterr().out == ""


def test_first_signal_asks_to_stop_and_the_second_acts_as_usual():
    """The handler in place before (here a recording one: a job started in the background by a shell
    has SIGINT ignored, so Python's KeyboardInterrupt handler cannot be assumed) is back after the
    first signal and gets the second."""
    got = []

    def previous(signum, frame):
        got.append(signum)
    saved = {s: signal.signal(s, previous) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for signum, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            with commands.StopSignals() as stop:
                assert stop.signal is None and stop.exit_code is None
                os.kill(os.getpid(), signum)
                assert stop.signal == f"interrupted ({name})" and stop.exit_code == 128 + int(signum)
                assert got == [] and signal.getsignal(signum) is previous
                os.kill(os.getpid(), signum)                   # the second one acts as before
                assert got == [signum]
            got.clear()
            assert signal.getsignal(signal.SIGINT) is previous and signal.getsignal(signal.SIGTERM) is previous
        with commands.StopSignals():
            pass                                               # no signal: both handlers put back on exit
        assert signal.getsignal(signal.SIGINT) is previous and signal.getsignal(signal.SIGTERM) is previous
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- a stream that ends before any frame
@pytest.mark.parametrize("ended,signum,code", [("interrupted", signal.SIGINT, 130),
                                               ("interrupted", signal.SIGTERM, 143), ("stdout closed", None, 0)])
def test_a_stream_stopped_before_its_first_frame_writes_nothing(ended, signum, code, tmp_path, capsys, monkeypatch,
                                                                keep_threads):
    """Stopped before any frame (a signal while waiting for the first prompt, or the reader gone): the
    exit code of the signal (128 + its number) or 0, one line saying nothing was written, no files. The
    streaming loop is replaced by one that receives the signal (the real StopSignals handles it)."""
    def stream(session, args, live_stdin, log, stop, goals):
        if signum is not None:
            os.kill(os.getpid(), signum)
        return [], 0.0, None, stop.signal if signum is not None else ended, 0
    monkeypatch.setattr(commands, "_stream", stream)
    code_got, err = run_cli(["stream", "--stdin", "--out", tmp_path / "s", "--sampling-steps", "2"], capsys)
    assert code_got == code, err
    what = f"interrupted ({signal.Signals(signum).name})" if signum is not None else ended
    assert f"motionstreamer: {what} before any frame was generated; nothing written" in err
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_whose_action_ends_at_once_is_a_clear_error(tmp_path, capsys, monkeypatch, keep_threads):
    monkeypatch.setattr(commands, "_stream",
                        lambda session, args, live_stdin, log, stop, goals: ([], 0.0, None, None, 0))
    code, err = run_cli(["generate", "a person walks", "--out", tmp_path / "g", "--sampling-steps", "2"], capsys)
    assert code == 2 and "no frames were generated (the first action ended immediately); try another seed" in err
    assert list(tmp_path.iterdir()) == []


def test_the_default_line_limit_is_16_kib():
    got, logs = [], []
    commands.read_prompt_lines(reader(b"w" * 16384 + b"\n", b"w" * 16385 + b"\n", b"ok\n"), got.append, logs.append)
    assert got == ["w" * 16384, "ok"] and logs == ["ignored a line longer than 16384 bytes (one prompt per line)"]


def test_each_json_line_is_flushed_as_it_is_made(monkeypatch):
    """A reader at the other end of a pipe gets every chunk when it is made, not when a buffer fills."""
    import io

    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            self.flushes += 1
            super().flush()
    out = Stream()
    monkeypatch.setattr("sys.stdout", out)
    assert commands.print_jsonl({"start_frame": 4})
    assert out.getvalue() == '{"start_frame": 4}\n' and out.flushes == 1


def test_the_summary_line_reports_the_generation_time(tmp_path, capsys, keep_threads):
    """'generated N frames (k latents, S s of motion) in G s; ...; real-time factor Rx': G is the time
    spent generating (not negative, within the call's wall-clock time) and R = S / G."""
    import re
    import time

    t0 = time.perf_counter()
    code, err = run_cli(["generate", "a person walks", "--out", tmp_path / "g", "--sampling-steps", "2",
                         "--max-seconds", "0.5"], capsys)
    wall = time.perf_counter() - t0
    assert code == 0, err
    m = re.search(r"generated (\d+) frames \((\d+) latents, ([\d.]+) s of motion\) in ([\d.]+) s; first-latent "
                  r"latency ([\d.]+) ms; real-time factor ([\d.]+)x", err)
    assert m, err
    frames, latents, motion_s, gen_s, latency_ms, factor = (float(v) for v in m.groups())
    assert frames == 4 * latents and motion_s == pytest.approx(frames / 30, abs=0.01)
    assert 0 <= gen_s <= wall and 0 < latency_ms / 1000 <= wall          # (a negative time would not match)
    if gen_s >= 0.05:                                                    # printed to 0.01 s
        assert factor == pytest.approx(motion_s / gen_s, rel=0.25)
