"""What the add-on's buttons do, apart from Blender's UI: Generate (one request, keyed as an action)
and Live (a stream applied to the armature on Blender's main thread, baked into an action on Stop).
The motion math is motionstreamer's own (io.retarget, io.rig, representation), shipped in vendor/."""
from __future__ import annotations

import time

import numpy as np

from . import client


def _imports():
    from motionstreamer.io import blender_rig, retarget, rig

    return blender_rig, retarget, rig


def armature_retargeter(obj, bone_map_path: str = ""):
    """io.retarget.Retargeter for an armature object (its rest pose); RetargetError when unmappable."""
    blender_rig, retarget, _ = _imports()
    sk = blender_rig.armature_skeleton(obj)
    bone_map = retarget.load_bone_map(bone_map_path, sk) if bone_map_path else None
    return retarget.Retargeter(sk, bone_map)


# what the last Generate / Live used: the source joints and the target rig (read by the tests and
# by anyone scripting the add-on)
last = {}


def generate(obj, url: str, token: str, text: str, seconds: float, seed: int, bone_map_path: str = ""):
    """POST /v1/generate, retarget onto `obj`, key it as a new action; returns the action."""
    blender_rig, _, rig = _imports()
    retargeter = armature_retargeter(obj, bone_map_path)       # before the request: an unmappable rig costs nothing
    joints = client.generate(url, token, text, seconds, seed)
    motion = rig.prepare_motion(joints)                         # rigid, grounded by its foot contacts
    retargeter.set_source(motion.offsets)
    target = retargeter.retarget(motion.joints, motion.rotations)
    action = blender_rig.key_action(obj, target, name=f"ms {text[:40]}")
    last.update(mode="generate", source=motion.joints, target=target, retargeter=retargeter, action=action)
    return action


class Live:
    """A live stream onto `obj`: frames arrive in a background thread, `tick()` (a Blender timer, main
    thread) poses the armature at the stream's 30 fps clock; `stop()` bakes what was played."""

    def __init__(self, obj, url: str, token: str, text: str, seed: int, bone_map_path: str = ""):
        self.obj = obj
        self.retargeter = armature_retargeter(obj, bone_map_path)
        self.stream = client.LiveStream(url, token, seed)
        self.fps = float(self.stream.hello.get("fps", 30))
        self.played: list = []               # TargetRig chunks in order
        self.sources: list = []
        self.pending: list = []              # (TargetRig chunk, frame index) not yet shown
        self.frames_shown = 0
        self.started = None
        self.error = None
        if text:
            self.stream.prompt(text)

    def prompt(self, text: str) -> None:
        self.stream.prompt(text)

    def _take(self) -> None:
        from motionstreamer.io.retarget import _quat_matrix
        from motionstreamer.representation import ik

        while True:
            try:
                joints, quats, _ = self.stream.chunks.get_nowait()
            except Exception:
                return
            # the source skeleton: bone lengths over the frames so far (a stream's first frames are
            # not representative: its first latent's legs came out ~15% short in the tests)
            self.sources.append(joints)
            self.retargeter.set_source(ik.scaled_offsets(ik.bone_lengths(np.concatenate(self.sources[-75:]))))
            chunk = self.retargeter.stream(joints, _quat_matrix(quats))
            self.played.append(chunk)
            self.pending.extend((chunk, k) for k in range(len(chunk.rotations)))

    def tick(self) -> float | None:
        """Apply the frames due by now; the interval to the next call, or None when the stream ended."""
        blender_rig, _, _ = _imports()
        self._take()
        if self.stream.error:
            self.error = self.stream.error
            return None
        if self.pending and self.started is None:
            self.started = time.monotonic()
        if self.started is not None:
            due = int((time.monotonic() - self.started) * self.fps) + 1
            show = None
            while self.pending and self.frames_shown < due:
                show = self.pending.pop(0)
                self.frames_shown += 1
            if show is not None:
                blender_rig.apply_pose(self.obj, show[0], show[1])
        return 1.0 / 60.0

    def stop(self, bake: bool = True):
        """Close the stream; key everything received as an action (None when nothing came)."""
        blender_rig, retarget, _ = _imports()
        self.stream.close()
        self._take()
        if not bake or not self.played:
            return None
        first = self.played[0]
        rig = retarget.TargetRig(first.skeleton, np.concatenate([c.rotations for c in self.played]), first.mover,
                                 np.concatenate([c.translation for c in self.played]), first.fps, first.bone_map,
                                 first.scheme)
        action = blender_rig.key_action(self.obj, rig, name="ms live")
        last.update(mode="live", source=np.concatenate(self.sources), target=rig, retargeter=self.retargeter,
                    action=action)
        return action
