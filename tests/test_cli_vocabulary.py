"""The CLI's one sampler vocabulary: every verb that generates spells its sampler flags the same way
(--cfg-scale, --sampling-steps, --sampler, --head, --on-action-end) with the original's defaults, the
spellings of the previous release still work for one release with a one-line note, and the verb table
that keeps `motionstreamer --help` from importing any command module lists exactly what the modules
register."""
import argparse
import importlib
import subprocess
import sys

import pytest

from motionstreamer.cli import COMMAND_MODULES, VERBS, build_parser, main


def registered(module: str) -> set:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    importlib.import_module(module).register(sub)
    return set(sub.choices)


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_verb_table_lists_what_each_module_registers(module):
    assert registered(module) == {verb for verb, (m, _) in VERBS.items() if m == module}


def test_help_lists_every_verb_without_importing_a_command_module():
    code = ("import sys\nfrom motionstreamer.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.endswith('.commands') or m == 'torch'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "IMPORTED []" in r.stdout
    for verb in VERBS:
        assert f"\n    {verb} " in r.stdout or f"\n    {verb}\n" in r.stdout, verb


def parse(argv):
    return build_parser(argv[0]).parse_args(argv)


GENERATE = ["generate", "a person walks", "--out", "x"]


def test_sampler_flags_have_the_originals_defaults():
    """The original algorithm's values (the paper's demo: guidance 4, ancestral DDPM, temperature 1); the
    service keeps a stream going when an action ends, the one-shot verbs stop it."""
    g = parse(GENERATE)
    assert (g.cfg_scale, g.sampler, g.temperature, g.sampling_steps, g.head, g.on_action_end) == \
        (4.0, "ddpm", 1.0, None, None, "stop")
    e = parse(["evaluate", "t2m", "--data", "d"])
    assert (e.cfg_scale, e.sampler, e.sampling_steps, e.head) == (4.0, "ddpm", None, None)
    s = parse(["serve"])
    assert (s.cfg_scale, s.sampling_steps, s.head, s.on_action_end) == (4.0, None, None, "continue")


@pytest.mark.parametrize("argv, old, new", [
    (GENERATE, ["--cfg", "3", "--steps", "7", "--on-end", "continue"],
     ["--cfg-scale", "3", "--sampling-steps", "7", "--on-action-end", "continue"]),
    (["serve"], ["--steps", "12", "--cfg", "2.5", "--on-end", "stop"],
     ["--sampling-steps", "12", "--cfg-scale", "2.5", "--on-action-end", "stop"]),
    (["evaluate", "t2m", "--data", "d"], ["--cfg", "1", "--steps", "3"], ["--cfg-scale", "1", "--sampling-steps", "3"]),
    (["evaluate", "head", "--data", "d", "--latents", "l"], ["--cfg", "2"], ["--cfg-scale", "2"]),
    (["distill-head", "--checkpoint", "c", "--data", "d", "--latents", "l", "--out", "o"], ["--cfg", "5"],
     ["--cfg-scale", "5"]),
    (["export-onnx", "--out", "o"], ["--head", "ddim:5", "--head", "student:2"],
     ["--variant", "ddim:5", "--variant", "student:2"]),
])
def test_old_flag_spellings_still_work_and_say_so(argv, old, new, capsys):
    got = vars(parse(argv + old))
    notes = capsys.readouterr().err.splitlines()
    want = vars(parse(argv + new))
    assert capsys.readouterr().err == ""            # the current spellings print nothing
    assert got == want
    olds = [a for a in old if a.startswith("--")]
    assert len(notes) == len(olds)
    for flag, note in zip(olds, notes):
        assert note.startswith(f"motionstreamer: {flag} is deprecated, use --") and "next release" in note


def test_an_old_spelling_of_a_bad_number_names_the_current_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main([*GENERATE, "--cfg", "nan"])
    assert e.value.code == 2 and "--cfg-scale must be a finite number" in capsys.readouterr().err


def test_old_config_keys_are_read_with_a_note(capsys):
    from motionstreamer.train.common import parse_overrides
    from motionstreamer.train.distill import DistillConfig

    c = DistillConfig().updated(parse_overrides(["cfg=2.5", "skip_terminal=true"], DistillConfig))
    assert (c.cfg_scale, c.skip_terminal_step) == (2.5, True)
    err = capsys.readouterr().err
    assert "'cfg' is deprecated, use 'cfg_scale'" in err and "'skip_terminal' is deprecated" in err
    with pytest.raises(ValueError, match="not both"):
        DistillConfig().updated({"cfg": 2.0, "cfg_scale": 3.0})
