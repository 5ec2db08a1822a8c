"""Procedural motions on the SMPL 22-joint skeleton with paraphrased captions.

Every action writes per-frame *controls*: parent-local joint angles (Euler, R = Rx @ Ry @ Rz; the
ankles' angles are the foot's orientation on the floor, 0 = flat), the yaw rate, how much each foot
bears weight, a root velocity and whether that velocity drives the root. Two ways to move:

- gaits (walk, jog, run, backwards, circles, turns in place) plan footsteps: the pelvis follows the
  integrated path, each stance foot is pinned to its footstep on the floor, a swing foot travels to
  the next one, and analytic two-link leg IK places the ankles (lowering the pelvis where a planted
  foot would be out of reach: the gait's natural bob). The root follows the planned path;
- everything else (jumps, squats, kicks, waves, sitting, side steps) moves joint angles, and the root
  moves so that the weight-bearing toes stay where they are, keeping its velocity while airborne.

The root height puts the lowest foot on the floor; airborne stretches follow a ballistic arc. Global
joints come from forward kinematics with the pelvis rotation Ry(heading) @ tilt, so joints and
rotations are consistent by construction. Transitions cross-fade the controls (gait phases aligned,
longer fades for bigger pose changes), so streams are continuous. Deterministic for a seed (numpy
Generator only).

Writers: `make_dataset` writes the HumanML3D-272 layout, and with stream pairs also the BABEL-stream
layout (`babel_stream/`) and a BABEL-272 layout of the stream segments (`babel_272/`).

Modules: body (joint indices, Controls, helpers, posture layers), gait (leg IK, footstep-planned
gaits), actions (one controls writer per action, parameter sampling), captions (paraphrases and
tokens), assembly (integration and forward kinematics, chained actions, clips), writers (datasets).
"""
from motionstreamer import FPS
from motionstreamer.data.synth.actions import ACTIONS, FINAL_ONLY, GAIT_ACTIONS, sample_params
from motionstreamer.data.synth.assembly import (
                                                Clip,
                                                chain,
                                                frame_seconds,
                                                generate_clip,
                                                generate_composite,
                                                generate_sequence,
                                                integrate,
)
from motionstreamer.data.synth.body import Controls, euler_xyz
from motionstreamer.data.synth.captions import captions_for, tokens_for, verb_phrases
from motionstreamer.data.synth.gait import Leg, leg_ik
from motionstreamer.data.synth.writers import VERSION, make_dataset, write_stream

__all__ = ["FPS", "ACTIONS", "FINAL_ONLY", "GAIT_ACTIONS", "sample_params", "Clip", "chain", "frame_seconds",
           "generate_clip", "generate_composite", "generate_sequence", "integrate", "Controls", "euler_xyz",
           "captions_for", "tokens_for", "verb_phrases", "Leg", "leg_ik", "VERSION", "make_dataset", "write_stream"]
