"""CLI verbs for motion output: `render` (.mp4 / .gif), `to-bvh`, `to-glb`, `to-smpl`, `to-fbx`,
`retarget` (onto a user's rig), `blender-addon` (the add-on's zip); and the export options and writer
that `generate` / `stream` share (`add_export_args`, `write_outputs`).

Every output of one motion shows the same joints: `io.rig.prepare_motion` (rigid skeleton with the
motion's bone lengths, grounded by foot contacts, optionally foot-cleaned) is computed once and each
file is written from it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from motionstreamer import FEATURE_DIM, FPS, NUM_JOINTS
from motionstreamer.cli import CLIError
from motionstreamer.io.blender_addon import build_addon_zip
from motionstreamer.io.blender_process import BlenderError, find_blender
from motionstreamer.io.bvh import write_rig_bvh
from motionstreamer.io.fbx import write_fbx
from motionstreamer.io.gltf import write_glb
from motionstreamer.io.motion_io import MAX_FPS, load_motion_array, motion_kind, to_features
from motionstreamer.io.render import check_title as check
from motionstreamer.io.render import render_motion
from motionstreamer.io.retarget import Retargeter, load_bone_map
from motionstreamer.io.rig import make_rig, prepare_motion
from motionstreamer.io.smpl import amass_params, write_amass_npz
from motionstreamer.io.target_io import OUT_SUFFIXES, read_skeleton, write_target
from motionstreamer.utils import atomic_save_npy

MOTION_HELP = """\
INPUT is 272-dim features (frames, 272) or joint positions (frames, 22, 3) / (frames, 66). Features
must be de-normalised; give --mean and --std if the file holds normalised features. The motion is put
on one rigid skeleton with its own bone lengths, grounded by its foot contacts (no foot joint below
y = 0), and with --clean-feet its planted feet are pinned (foot-skating clean-up).
"""
RENDER_HELP = "Render a motion .npy as a skeleton video (.mp4 or .gif).\n" + MOTION_HELP
TO_BVH_HELP = """\
Convert a motion to BVH (24-joint SMPL hierarchy, ZYX Euler degrees; Blender: File > Import > BVH).
Default: the motion's own skeleton with rotations solved from its joints, the same joints as the video
and PREFIX_joints.npy. --skeleton smpl-neutral --rotations model writes the released converter's file
(the model's rotation channels on SMPL-neutral bones; other joints, feet not on the floor).
""" + MOTION_HELP
TO_GLB_HELP = """\
Convert a motion to glTF 2.0 binary (.glb): a skinned skeleton with its animation (30 fps keys) and a
simple capsule body, for three.js, Blender, Unity, Unreal and web viewers.
""" + MOTION_HELP
TO_SMPL_HELP = """\
Convert 272-dim features to SMPL parameters in the AMASS .npz layout (poses (T, 156) axis-angle in the
SMPL+H order with zero hands, trans, betas zeros, gender neutral, mocap_framerate; Z up as AMASS) for
the smplx library and the SMPL-X Blender add-on. Rotations: the model's rotation channels (default) or
solved from the joints (--rotations solved, needed for joint-position input); trans grounded by the
body's foot contacts.
""" + MOTION_HELP
TO_FBX_HELP = """\
Convert a motion to FBX (binary, 7.4) through Blender's own exporter: the 24-joint skeleton with one key
per frame, Y up, -Z forward, FBX unit scale (Unity: Scale Factor 1; Unreal: Import Uniform Scale 1; see
docs/blender.md). Blender: bpy in this Python (pip install "motionstreamer[blender]", Python 3.11),
else $MOTIONSTREAMER_BLENDER (a Python with bpy, or a Blender 4.2+ executable), else `blender` on PATH.
""" + MOTION_HELP
RETARGET_HELP = """\
Put a motion onto your own humanoid rig and write it in that rig's hierarchy and rest pose. RIG is a
.bvh, .glb / .gltf or .fbx (FBX read through Blender, found as for to-fbx); its bones are
mapped from their names (SMPL, Mixamo mixamorig:, Rigify DEF-/ORG-, Blender's metarig, Unreal's
mannequin) or by --map (JSON or YAML: {"Pelvis": "hips", "Left_hip": "thigh_l", ...}, the SMPL joint
names of `motionstreamer to-bvh`). A-pose or T-pose rest poses and bone rolls are absorbed; the root
moves along the motion's path scaled by leg length; planted feet stay planted on the rig's floor
(leg IK). OUT: .bvh, .glb or .fbx (an FBX rig is re-imported and keyed, so its meshes come along).
""" + MOTION_HELP
ADDON_HELP = """\
Zip the Blender add-on (integrations/blender: a Blender 4.2+ extension) with the retargeting code it
needs, ready for Blender's Preferences > Get Extensions > Install from Disk. See docs/blender.md.
"""


# ----------------------------------------------------------------------------------------- options
def _add_rig_args(p: argparse.ArgumentParser, bvh: bool) -> None:
    p.add_argument("--skeleton", choices=("motion", "smpl-neutral"), default="motion",
                   help="bone lengths: the motion's own (default: the exported joints equal PREFIX_joints.npy) "
                        "or SMPL neutral's"
                        + (" (with --rotations model: the released converter's BVH)" if bvh else ""))
    p.add_argument("--rotations", choices=("solved", "model"), default="solved",
                   help="solved from the joint positions (default) or the model's rotation channels as they are")
    p.add_argument("--rig", choices=("smpl", "mixamo"), default="smpl",
                   help="joint names: SMPL's (Pelvis, Left_hip, ...) or Mixamo's (mixamorig:Hips, ...: Unity "
                        "Humanoid and Mixamo-based retargeters map them automatically)")


def _add_motion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", metavar="MEAN.npy", help="feature Mean (272,) to de-normalise INPUT (needs --std)")
    p.add_argument("--std", metavar="STD.npy", help="feature Std (272,) to de-normalise INPUT (needs --mean)")
    p.add_argument("--fps", type=float, default=float(FPS), help="frames per second of INPUT (default: %(default)g)")
    p.add_argument("--clean-feet", action="store_true",
                   help="foot-skating clean-up: pin planted feet to the floor (leg IK), smooth hand-over")


def _add_render_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}size", type=int, default=480,
                   help="picture height (and width per view) in pixels, even (default: 480)")
    p.add_argument(f"--{prefix}views", type=int, choices=(1, 3), default=1,
                   help="1: one following camera (default); 3: front, side and top side by side")


def add_export_args(p: argparse.ArgumentParser) -> None:
    """The output options of `generate` / `stream` (files beside PREFIX)."""
    p.add_argument("--bvh", action="store_true", help="also write PREFIX.bvh")
    p.add_argument("--glb", action="store_true", help="also write PREFIX.glb (glTF 2.0, skinned skeleton + body)")
    p.add_argument("--smpl", action="store_true", help="also write PREFIX_smpl.npz (SMPL parameters, AMASS layout)")
    p.add_argument("--fbx", action="store_true",
                   help="also write PREFIX.fbx (through Blender's exporter: bpy, $MOTIONSTREAMER_BLENDER or "
                        "`blender` on PATH; see `to-fbx --help`)")
    p.add_argument("--render", choices=("mp4", "gif"), default=None, help="also render PREFIX.mp4 / PREFIX.gif")
    _add_render_args(p, prefix="render-")
    _add_rig_args(p, bvh=True)
    p.add_argument("--clean-feet", action="store_true",
                   help="foot-skating clean-up of the written files (offline, whole motion); with stream "
                        "--jsonl the printed chunks are cleaned causally, chunk by chunk")


def register(subparsers) -> None:
    def verb(name: str, help: str, description: str, out: str, out_help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("input", metavar="INPUT.npy", help="features (frames, 272) or joints (frames, 22, 3)")
        p.add_argument("--out", required=True, metavar=out, help=out_help)
        _add_motion_args(p)
        return p

    p = verb("render", "render a motion .npy to .mp4 or .gif", RENDER_HELP, "OUT.mp4|OUT.gif",
             "output video; format from the suffix")
    p.add_argument("--title", default="", help="caption in a band above the picture (literal text)")
    _add_render_args(p)
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="draw every Nth frame (at fps / N, so the motion keeps its speed): smaller GIFs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_render)

    p = verb("to-bvh", "convert a motion .npy to BVH", TO_BVH_HELP, "OUT.bvh", "output BVH file")
    _add_rig_args(p, bvh=True)
    p.add_argument("--floor-at-zero", action="store_true",
                   help="with --skeleton smpl-neutral --rotations model: write the root position without the "
                        "rest-pelvis offset (the released converter adds it; its files put the floor ~0.22 m lower)")
    p.set_defaults(func=cmd_export, suffix=".bvh")

    p = verb("to-glb", "convert a motion .npy to glTF binary (.glb)", TO_GLB_HELP, "OUT.glb", "output .glb file")
    _add_rig_args(p, bvh=False)
    p.set_defaults(func=cmd_export, suffix=".glb")

    p = verb("to-smpl", "convert a motion .npy to SMPL parameters (AMASS .npz)", TO_SMPL_HELP, "OUT.npz",
             "output .npz file")
    p.add_argument("--rotations", choices=("model", "solved"), default="model",
                   help="the model's rotation channels (default) or rotations solved from the joints")
    p.set_defaults(func=cmd_export, suffix=".npz")

    p = verb("to-fbx", "convert a motion .npy to FBX (through Blender)", TO_FBX_HELP, "OUT.fbx", "output .fbx file")
    _add_rig_args(p, bvh=False)
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    p.set_defaults(func=cmd_export, suffix=".fbx")

    p = verb("retarget", "put a motion onto your own rig (BVH, glTF, FBX)", RETARGET_HELP, "OUT.bvh|OUT.glb|OUT.fbx",
             "output file in the rig's hierarchy; format from the suffix")
    p.add_argument("--target", required=True, metavar="RIG", help="the rig: .bvh, .glb, .gltf or .fbx")
    p.add_argument("--map", metavar="MAP.json|MAP.yaml", help="bone map {SMPL joint name: bone name} (default: "
                   "detected from the bone names)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    p.set_defaults(func=cmd_retarget)

    p = subparsers.add_parser("blender-addon", help="zip the Blender add-on (a Blender 4.2+ extension)",
                              description=ADDON_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="OUT.zip", help="the extension's .zip")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    p.set_defaults(func=cmd_blender_addon)


# ----------------------------------------------------------------------------------------- checks
def check_title(title: str, flag: str = "--title") -> str:
    try:
        return check(title)
    except ValueError as e:
        raise CLIError(f"{flag}: {e}") from None


def check_out_file(out: str, suffixes: tuple[str, ...]) -> Path:
    """--out of a file verb: the right suffix, a file name, not a folder; ~ expanded."""

    path = Path(out).expanduser()
    if not out or not path.name or path.name in (".", "..") or out.endswith(("/", "\\")):
        raise CLIError(f"--out {out!r} has no file name; give e.g. out/walk{suffixes[0]}")
    if path.suffix.lower() not in suffixes:
        raise CLIError(f"--out {out!r}: the output must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise CLIError(f"--out {out!r} is a directory; give a file name")
    return path


def check_new_file(path: Path, args) -> None:
    """CLIError when OUT exists and --overwrite was not given (these verbs never replace a file unasked)."""
    if path.exists() and not getattr(args, "overwrite", False):
        raise CLIError(f"--out {path} exists; give --overwrite to replace it")


def check_fbx_tools() -> None:
    """CLIError naming the ways to get Blender when FBX cannot be read or written (io.blender_process)."""
    try:
        find_blender()
    except BlenderError as e:
        raise CLIError(str(e)) from None


def _check_common(args) -> None:
    if (args.mean is None) != (args.std is None):
        given, missing = ("--mean", "--std") if args.mean is not None else ("--std", "--mean")
        raise CLIError(f"{given} needs {missing} too (normalised features are de-normalised with both)")
    if not 0 < args.fps <= MAX_FPS:
        raise CLIError(f"--fps must be in (0, {MAX_FPS:g}], got {args.fps:g}")


def _load(args):
    """(input array, mean, std) with file errors turned into CLI errors naming the argument."""

    def load(path, what):
        try:
            return load_motion_array(path, name=f"{what} {path}")
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(str(e)) from None

    x = load(args.input, "INPUT")
    stats = []
    for flag, path in (("--mean", args.mean), ("--std", args.std)):
        s = load(path, flag) if path is not None else None
        if s is not None and s.shape != (FEATURE_DIM,):
            raise CLIError(f"{flag} {path}: must hold the {FEATURE_DIM} feature statistics, shape ({FEATURE_DIM},), "
                           f"got {s.shape}")
        stats.append(s)
    std = stats[1]
    if std is not None and not np.all(std > 0):
        bad = int(np.flatnonzero(~(std > 0))[0])
        raise CLIError(f"--std {args.std}: every entry must be > 0 (features are de-normalised as x * std + "
                       f"mean); entry {bad} is {std[bad]:g}")
    return x, *stats


def _motion(args):
    """io.rig.Motion of INPUT (de-normalised, grounded, cleaned if asked), CLI errors for bad input."""

    _check_common(args)
    x, mean, std = _load(args)
    name = f"INPUT {args.input}"
    try:
        if mean is not None:
            if motion_kind(x, name) != "features":
                raise ValueError(f"{name} holds joint positions; mean/std apply only to 272-dim features")
            x = to_features(x, mean, std, name=name)
        return prepare_motion(x, clean_feet=args.clean_feet, fps=args.fps, name=name)
    except ValueError as e:
        raise CLIError(str(e)) from None


# ----------------------------------------------------------------------------------------- writing
def write_file(kind: str, path, motion, skeleton: str = "motion", rotations: str = "solved", rig: str = "smpl",
               floor_at_zero: bool = False, title: str = "", size: int = 480, views: int = 1,
               progress: bool = False) -> str:
    """Write one output of `motion` (io.rig.Motion); kind: bvh | glb | fbx | smpl | mp4 | gif. Returns a
    note for the log (what the file holds relative to the motion's joints)."""

    if kind in ("mp4", "gif"):

        render_motion(motion.joints, path, title=title, fps=motion.fps, progress=progress, size=size, views=views)
        return ""
    if kind == "smpl":

        write_amass_npz(path, amass_params(make_rig(motion, "smpl-neutral", rotations)))
        return f"SMPL-neutral body, {rotations} rotations, grounded"
    if kind == "fbx":
        r = make_rig(motion, skeleton, rotations, rig)
        write_fbx(path, r)
        return _rig_note(r, motion, skeleton, rotations)
    converter = kind == "bvh"
    r = make_rig(motion, skeleton, rotations, rig, converter=converter, floor_at_zero=floor_at_zero)
    if kind == "bvh":
        write_rig_bvh(path, r, converter=skeleton == "smpl-neutral" and rotations == "model")
    else:
        write_glb(path, r)
    return _rig_note(r, motion, skeleton, rotations)


def _rig_note(r, motion, skeleton: str, rotations: str) -> str:
    if skeleton == "motion" and rotations == "solved":
        return "same joints as the video"
    err = np.linalg.norm(r.joints()[:, :NUM_JOINTS] - motion.joints, axis=-1).mean() * 1000
    return f"{skeleton} skeleton, {rotations} rotations: joints differ from the video's by {err:.0f} mm on average"


def cmd_render(args) -> int:
    out = check_out_file(args.out, (".mp4", ".gif"))
    title = check_title(args.title)
    if args.size < 64 or args.size > 4096 or args.size % 2:
        raise CLIError(f"--size must be an even number of pixels in [64, 4096], got {args.size}")
    if args.every < 1:
        raise CLIError(f"--every must be >= 1, got {args.every}")
    motion = _motion(args)
    try:

        render_motion(motion.joints[::args.every], out, title=title, fps=args.fps / args.every,
                      progress=not args.quiet, size=args.size, views=args.views)
    except ValueError as e:
        raise CLIError(str(e)) from None
    except OSError as e:   # unwritable --out, ffmpeg failure
        raise CLIError(f"--out {args.out}: cannot write the video ({e})") from None
    if not args.quiet:
        print(f"wrote {out} ({len(motion)} frames, {len(motion) / args.fps:.2f} s at {args.fps:g} fps)")
    return 0


def cmd_export(args) -> int:
    out = check_out_file(args.out, (args.suffix,))
    kind = {".bvh": "bvh", ".glb": "glb", ".npz": "smpl", ".fbx": "fbx"}[args.suffix]
    if kind == "fbx":
        check_new_file(out, args)
        check_fbx_tools()
    skeleton, rig = getattr(args, "skeleton", "smpl-neutral"), getattr(args, "rig", "smpl")
    floor = getattr(args, "floor_at_zero", False)
    if floor and not (skeleton == "smpl-neutral" and args.rotations == "model"):
        raise CLIError("--floor-at-zero applies to --skeleton smpl-neutral --rotations model (the released "
                       "converter's layout); the other skeletons are already on the floor")
    motion = _motion(args)
    if args.rotations == "model" and motion.model_rotations is None:
        raise CLIError(f"INPUT {args.input} holds joint positions {tuple(motion.joints.shape)}; --rotations model "
                       "needs 272-dim features (frames, 272), whose rotation channels it exports (or use "
                       "--rotations solved)")
    try:
        note = write_file(kind, out, motion, skeleton, args.rotations, rig, floor_at_zero=floor)
    except (ValueError, BlenderError) as e:
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"--out {args.out}: cannot write ({e})") from None
    print(f"wrote {out} ({len(motion)} frames at {args.fps:g} fps; {note})")
    return 0


def output_files(prefix: Path, args) -> list[tuple[str, str]]:
    """(kind, path) of every file write_outputs writes for these arguments: the features, the joints,
    then the exports asked for. CLIError when a tool one of them needs is missing (Blender for --fbx)."""
    if getattr(args, "fbx", False):
        check_fbx_tools()
    return [("npy", f"{prefix}.npy"), ("joints", f"{prefix}_joints.npy")] + [
        (k, f"{prefix}{suffix}") for k, suffix, on in (
            ("bvh", ".bvh", args.bvh), ("glb", ".glb", args.glb), ("smpl", "_smpl.npz", args.smpl),
            ("fbx", ".fbx", getattr(args, "fbx", False)), (args.render, f".{args.render}", args.render)) if on]


def write_outputs(prefix: Path, features, args, title: str, log) -> list[str]:
    """Files of a generated motion: PREFIX.npy (de-normalised features, as generated), PREFIX_joints.npy
    (the joints every output shows) and the exports asked for. Returns the paths written."""

    title = title.encode("utf-8", "replace").decode("utf-8")   # a caption must not fail a finished generation
    motion = prepare_motion(features, clean_feet=args.clean_feet)
    log(f"skeleton: the motion's own bone lengths; the position channels moved {motion.fit_error_mm:.1f} mm on "
        f"average onto it; grounded by foot contacts" + ("; feet cleaned" if args.clean_feet else ""))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(f"{prefix}.npy", features)
    atomic_save_npy(f"{prefix}_joints.npy", motion.joints.astype(np.float32))
    written = [f"{prefix}.npy", f"{prefix}_joints.npy"]
    for kind, path in output_files(prefix, args)[2:]:
        try:
            note = write_file(kind, path, motion, args.skeleton, args.rotations if kind != "smpl" else "model",
                              args.rig, title=title, size=args.render_size, views=args.render_views,
                              progress=not args.quiet)
        except BlenderError as e:      # FBX through a Blender out of process: what is written so far stays
            raise CLIError(f"{path}: {e} (written: {', '.join(written)})") from None
        written.append(path + (f" ({note})" if note else ""))
    return written


def cmd_retarget(args) -> int:
    out = check_out_file(args.out, OUT_SUFFIXES)
    check_new_file(out, args)
    if out.suffix.lower() == ".fbx" or str(args.target).lower().endswith(".fbx"):
        check_fbx_tools()
    try:
        skeleton = read_skeleton(args.target)
        bone_map = load_bone_map(args.map, skeleton) if args.map else None
        motion = _motion(args)
        retargeter = Retargeter(skeleton, bone_map, motion.offsets, motion.fps)
        rig = retargeter.retarget(motion.joints, motion.rotations)
        write_target(out, rig)
    except (ValueError, BlenderError) as e:      # RetargetError is a ValueError
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"--out {args.out}: cannot write ({e})") from None
    print(f"wrote {out} ({len(motion)} frames at {args.fps:g} fps on {len(skeleton.names)} bones of {args.target}; "
          f"bone map: {retargeter.scheme}, {len(retargeter.map)} of 22 joints; root motion x{retargeter.scale:.3f} "
          "(leg length)")
    return 0


def cmd_blender_addon(args) -> int:
    out = check_out_file(args.out, (".zip",))
    check_new_file(out, args)
    try:
        build_addon_zip(out)
    except OSError as e:
        raise CLIError(f"--out {args.out}: cannot write ({e})") from None
    print(f"wrote {out} (Blender: Edit > Preferences > Get Extensions > Install from Disk)")
    return 0
