"""The sampler flags of every verb that generates, declared once.

add_sampler_args(parser, "cfg_scale", "sampling_steps", ...) adds the flags a verb takes: each is named
after its GenerationConfig field (`--cfg-scale` sets cfg_scale) and defaults to GenerationConfig's value
unless the verb passes its own. generation_config(args) builds the GenerationConfig back from them. The
spellings before the one sampler vocabulary (--cfg, --steps, --on-end) are deprecated aliases for one
release: they still work and print a note.
"""
from __future__ import annotations

import argparse
import dataclasses

from motionstreamer.cli import add_deprecated_alias
from motionstreamer.models.sampling import HEADS, SAMPLERS
from motionstreamer.runtime.engine import ON_ACTION_END, GenerationConfig


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


# field -> (flag, its old spelling or None, argparse keywords, help)
FLAGS = {
    "cfg_scale": ("--cfg-scale", "--cfg", {"type": float, "metavar": "S"},
                  "classifier-free guidance scale: eps_u + S (eps_c - eps_u); 1 turns guidance off"),
    "sampling_steps": ("--sampling-steps", "--steps", {"type": int, "metavar": "N"},
                       "diffusion sampling steps per latent (the teacher: 50 is the original; a student: one of "
                       "the counts it supports; a count the model's default student does not support runs the "
                       "teacher)"),
    "sampler": ("--sampler", None, {"choices": SAMPLERS}, "ddpm: ancestral, as the original; ddim"),
    "head": ("--head", None, {"choices": HEADS},
             "teacher: the guided head, the original algorithm; student: the bundle's distilled few-step head "
             "(default: the bundle's, the embedded model's student)"),
    "temperature": ("--temperature", None, {"type": float, "metavar": "T"}, "scales the sampling noise"),
    "end_threshold": ("--end-threshold", None, {"type": float, "metavar": "D"},
                      "L2 distance to the reference end latent that ends an action"),
    "on_action_end": ("--on-action-end", "--on-end", {"choices": ON_ACTION_END},
                      "an action that ends with no prompt queued: stop the stream, or continue it"),
    "goal_tolerance": ("--goal-tolerance", None, {"type": float, "metavar": "METRES"},
                       "a goal is reached within this distance of the pelvis (<= 0: never; docs/goals.md)"),
    "goal_steering": ("--goal-steering", None, {"type": on_off, "metavar": "on|off"},
                      "warp the root motion toward the goal within a person's turn rate and speed range (off: "
                      "the model's own motion; docs/goals.md)"),
}


def add_sampler_args(parser: argparse.ArgumentParser, *fields: str, defaults=None, helps: dict | None = None,
                     **default_overrides) -> None:
    """Add the flags of `fields` (GenerationConfig field names) to `parser`. Defaults come from `defaults`
    (GenerationConfig() when None; any object with those attributes), then `default_overrides`; `helps`
    replaces a flag's help text. A default of None is left out of the help (the text says what it means)."""
    defaults = GenerationConfig() if defaults is None else defaults
    for name in fields:
        flag, old, kw, text = FLAGS[name]
        default = default_overrides.get(name, getattr(defaults, name))
        text = (helps or {}).get(name, text)
        if default is not None:
            text += " (default: %(default)s)"
        action = parser.add_argument(flag, dest=name, default=default, help=text, **kw)
        if old is not None:
            add_deprecated_alias(parser, old, action)


def generation_config(args: argparse.Namespace, base: GenerationConfig | None = None) -> GenerationConfig:
    """`base` (default GenerationConfig()) with the sampler flags the verb declared; not validated."""
    given = {name: getattr(args, name) for name in FLAGS if hasattr(args, name)}
    return dataclasses.replace(base or GenerationConfig(), **given)
