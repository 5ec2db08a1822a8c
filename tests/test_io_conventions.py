"""The exports against published conventions and measured behaviour, written here as literals (never read
from the module's own tables): SMPL's kinematic tree and joint names, Mixamo's bone names and hierarchy,
AMASS's Z-up world with the body facing -Y (decoded with scipy and an SMPL forward kinematics written
here), the foot clean-up measured on a walk whose stance phases are known (skating down, planted feet on
the floor), and the contact, floor and motion-file checks at both sides of their bounds."""
from __future__ import annotations

import numpy as np
import pytest
from bvh import Bvh
from pygltflib import GLTF2
from scipy.spatial.transform import Rotation
from test_representation_ik_feet import FPS, skating_walk

from motionstreamer.io.commands import write_file
from motionstreamer.io.motion_io import check_fps, motion_kind, to_joints
from motionstreamer.io.rig import make_rig, prepare_motion
from motionstreamer.representation import feet
from motionstreamer.representation.skeleton import SMPL_OFFSETS_24

# SMPL (Loper et al. 2015): the kinematic tree of its 24 joints, and the names the released 272
# converter writes
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
SMPL_NAMES = ["Pelvis", "Left_hip", "Right_hip", "Spine1", "Left_knee", "Right_knee", "Spine2", "Left_ankle",
              "Right_ankle", "Spine3", "Left_foot", "Right_foot", "Neck", "Left_collar", "Right_collar", "Head",
              "Left_shoulder", "Right_shoulder", "Left_elbow", "Right_elbow", "Left_wrist", "Right_wrist",
              "Left_palm", "Right_palm"]
# SMPL-neutral's pelvis at rest (betas 0, its model frame): AMASS puts the pelvis at trans + this
SMPL_J0 = np.array([-0.0018, -0.2233, 0.0282])
# Mixamo's rig: each SMPL joint's bone (in SMPL order) and that bone's parent in Mixamo's hierarchy
MIXAMO = ["Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot", "RightFoot",
          "Spine2", "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder", "Head", "LeftArm",
          "RightArm", "LeftForeArm", "RightForeArm", "LeftHand", "RightHand", "LeftHandMiddle1", "RightHandMiddle1"]
MIXAMO_PARENT = {"Hips": None, "Spine": "Hips", "Spine1": "Spine", "Spine2": "Spine1", "Neck": "Spine2",
                 "Head": "Neck", "LeftShoulder": "Spine2", "LeftArm": "LeftShoulder", "LeftForeArm": "LeftArm",
                 "LeftHand": "LeftForeArm", "LeftHandMiddle1": "LeftHand", "RightShoulder": "Spine2",
                 "RightArm": "RightShoulder", "RightForeArm": "RightArm", "RightHand": "RightForeArm",
                 "RightHandMiddle1": "RightHand", "LeftUpLeg": "Hips", "LeftLeg": "LeftUpLeg", "LeftFoot": "LeftLeg",
                 "LeftToeBase": "LeftFoot", "RightUpLeg": "Hips", "RightLeg": "RightUpLeg", "RightFoot": "RightLeg",
                 "RightToeBase": "RightFoot"}
SPEED = 0.7          # the walk's forward speed (m/s, along +Z in the Y-up frame)


@pytest.fixture(scope="module")
def walk():
    """A 5 s walk along +Z whose planted feet slide forward at 0.55 m/s (the skating of generated motion),
    with its stance masks: foot k is planted while (t + 0.5 k) mod 1 < 0.6."""
    T = 150
    t = np.arange(T) / FPS
    stance = np.stack([(t + 0.5 * k) % 1.0 < 0.6 for k in range(2)], 1)
    j, _ = feet.ground(skating_walk(T=T, slide=0.55, speed=SPEED))
    return j, stance


@pytest.fixture(scope="module")
def motion(walk):
    return prepare_motion(walk[0])


# ----------------------------------------------------------------------------- SMPL / AMASS
def smpl_fk_z_up(poses: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """SMPL's forward kinematics, written from the paper: G_0 = [R_0 | J_0], G_k = G_parent(k) [R_k | J_k -
    J_parent(k)], joint k at G_k's translation + trans; R from the axis-angle poses by scipy."""
    rest = np.zeros((24, 3))
    for k in range(24):
        rest[k] = SMPL_OFFSETS_24[k] + (rest[SMPL_PARENTS[k]] if k else 0.0)
    R = Rotation.from_rotvec(poses[:, :72].reshape(-1, 3)).as_matrix().reshape(len(poses), 24, 3, 3)
    G_rot, G_pos = [None] * 24, [None] * 24
    for k in range(22):
        p = SMPL_PARENTS[k]
        if p < 0:
            G_rot[k], G_pos[k] = R[:, 0], np.broadcast_to(rest[0], (len(poses), 3))
        else:
            G_rot[k] = G_rot[p] @ R[:, k]
            G_pos[k] = G_pos[p] + np.einsum("tab,b->ta", G_rot[p], rest[k] - rest[p])
    return np.stack(G_pos[:22], 1) + trans[:, None]


def test_smpl_pelvis_rest_position_is_smpl_neutrals():
    np.testing.assert_allclose(SMPL_OFFSETS_24[0], SMPL_J0, atol=1e-4)


def test_smpl_file_is_amass_z_up_facing_minus_y(motion, tmp_path):
    path = tmp_path / "walk.npz"
    write_file("smpl", path, motion)
    d = np.load(path)
    T = len(motion)
    assert set(d.files) == {"poses", "trans", "betas", "gender", "mocap_framerate", "dmpls"}
    assert d["poses"].shape == (T, 156) and not d["poses"][:, 66:].any()          # 22 body joints, no hands
    assert d["trans"].shape == (T, 3) and d["betas"].shape == (16,) and not d["betas"].any()
    assert str(d["gender"]) == "neutral" and float(d["mocap_framerate"]) == 30.0
    assert d["dmpls"].shape == (T, 8) and not d["dmpls"].any()
    root = Rotation.from_rotvec(d["poses"][:, :3])
    # upright: SMPL's up (+Y of its model frame) is AMASS's +Z; its facing (+Z) is -Y
    np.testing.assert_allclose(root.apply([0.0, 1.0, 0.0]), np.tile([0.0, 0.0, 1.0], (T, 1)), atol=0.05)
    np.testing.assert_allclose(root.apply([0.0, 0.0, 1.0]), np.tile([0.0, -1.0, 0.0], (T, 1)), atol=0.05)
    # the pelvis is trans + J0: its height is the Y-up pelvis height, walking forward runs along -Y
    pelvis = d["trans"] + SMPL_J0
    np.testing.assert_allclose(pelvis[:, 2], motion.joints[:, 0, 1], atol=0.03)
    assert np.diff(pelvis[:, 1]).mean() == pytest.approx(-SPEED / FPS, rel=0.05)
    assert np.abs(np.diff(pelvis[:, 0])).max() < 0.005
    # the whole body through SMPL's own FK: upright, feet on the floor z = 0
    j = smpl_fk_z_up(d["poses"], d["trans"])
    assert (j[:, 15, 2] > j[:, 0, 2] + 0.4).all()                                 # the head above the pelvis
    lowest = j[:, [7, 8, 10, 11], 2].min(1)
    assert lowest.min() > -0.01 and np.median(lowest) < 0.02
    # and the left side (SMPL's +X at rest) stays +X: a Y-up -> Z-up turn, not a mirror
    assert (j[:, 16, 0] > j[:, 17, 0]).all()


# ----------------------------------------------------------------------------- rig names and hierarchy
def bvh_tree(path) -> tuple[list[str], dict, dict]:
    """(joint names in file order, parent name per joint, rest position per joint) with the `bvh` parser."""
    mocap = Bvh(path.read_text())
    names = mocap.get_joints_names()
    parent = {n: (mocap.joint_parent(n).name if mocap.joint_parent(n) is not None else None) for n in names}
    rest = {}
    for n in names:
        off = np.array([float(v) for v in mocap.joint_offset(n)])
        rest[n] = off + (rest[parent[n]] if parent[n] else 0.0)
    return names, parent, rest


def test_smpl_rig_bvh_has_smpls_names_and_tree(motion, tmp_path):
    write_file("bvh", tmp_path / "s.bvh", motion)
    names, parent, rest = bvh_tree(tmp_path / "s.bvh")
    assert sorted(names) == sorted(SMPL_NAMES)
    assert parent == {n: (SMPL_NAMES[p] if p >= 0 else None) for n, p in zip(SMPL_NAMES, SMPL_PARENTS)}
    assert names[0] == "Pelvis"
    for n in SMPL_NAMES:                   # the rig faces +Z: its left side is +X
        if n.startswith("Left_"):
            assert rest[n][0] > 0 and rest["Right_" + n[5:]][0] < 0, n


@pytest.mark.parametrize("kind", ["bvh", "glb"])
def test_mixamo_rig_has_mixamos_bone_names_and_hierarchy(motion, tmp_path, kind):
    path = tmp_path / f"m.{kind}"
    write_file(kind, path, motion, rig="mixamo")
    want_parent = {f"mixamorig:{n}": (f"mixamorig:{p}" if p else None) for n, p in MIXAMO_PARENT.items()}
    if kind == "bvh":
        names, parent, rest = bvh_tree(path)
        assert parent == want_parent
        assert rest["mixamorig:LeftHand"][0] > 0.4 and rest["mixamorig:RightHand"][0] < -0.4
        assert rest["mixamorig:LeftUpLeg"][0] > 0 and rest["mixamorig:RightUpLeg"][0] < 0
        assert rest["mixamorig:Head"][1] > rest["mixamorig:Hips"][1] + 0.4
        return
    g = GLTF2().load(str(path))                       # pygltflib: an independent reader of the file
    skin = g.skins[0]
    assert [g.nodes[i].name for i in skin.joints] == [f"mixamorig:{n}" for n in MIXAMO]   # Mixamo bones, SMPL order
    parent = {}
    for i in skin.joints:
        for c in g.nodes[i].children or []:
            parent[g.nodes[c].name] = g.nodes[i].name
    assert {n: parent.get(n) for n in want_parent} == want_parent


# ----------------------------------------------------------------------------- the foot clean-up, measured
def test_clean_up_removes_the_skating_and_plants_the_feet(walk):
    """Measured on the walk's own stance phases (not the clean-up's contacts): while a foot is planted
    its horizontal speed drops from the 0.55 m/s slide to near zero and it rests on the floor; the upper
    body and the bone lengths are kept."""
    j, stance = walk
    raw = prepare_motion(j).joints
    clean = prepare_motion(j, clean_feet=True).joints
    inner = stance & np.roll(stance, 4, 0) & np.roll(stance, -4, 0)      # away from the hand-over ramps
    inner[:5] = inner[-5:] = False

    def slide(x):
        v = np.linalg.norm(np.diff(x[:, [10, 11]][..., [0, 2]], axis=0), axis=-1) * FPS     # horizontal m/s
        return np.concatenate([v, v[-1:]])[inner]

    assert np.median(slide(raw)) > 0.4
    assert np.median(slide(clean)) < 0.05 and np.percentile(slide(clean), 90) < 0.15
    heights = clean[:, [10, 11], 1][inner]
    assert np.median(np.abs(heights)) < 0.005 and clean[:, [7, 8, 10, 11], 1].min() > -1e-4
    upper = [0, 3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]           # only the legs are moved
    assert np.abs(clean[:, upper] - raw[:, upper]).max() < 0.01

    def bones(x):
        return np.linalg.norm(x[:, 1:] - x[:, SMPL_PARENTS[1:22]], axis=-1)
    np.testing.assert_allclose(bones(clean), bones(raw), atol=1e-6)


# ----------------------------------------------------------------------------- contacts and the floor, both sides
def still_feet(height: float, speed: float, T: int = 40) -> np.ndarray:
    """Joints whose two foot joints hold `height` and move forward at `speed` m/s, the rest far above."""
    j = np.zeros((T, 22, 3))
    j[:, :, 1] = 1.0
    j[:, [10, 11], 1] = height
    j[:, [10, 11], 2] = (np.arange(T) * speed / FPS)[:, None]
    return j


@pytest.mark.parametrize("height,speed,planted", [(0.049, 0.0, True), (0.051, 0.0, False), (0.0, 0.89, True),
                                                  (0.0, 0.91, False), (-0.02, 0.5, True)])
def test_planted_is_below_5_cm_and_slower_than_0_9_m_per_s(height, speed, planted):
    c = feet.foot_contacts(still_feet(height, speed))
    assert c.shape == (40, 2) and (c.all() if planted else not c.any())


@pytest.mark.parametrize("above,moved", [(0.019, False), (0.021, True)])
def test_a_motion_within_2_cm_above_the_floor_is_left_as_it_is(above, moved):
    j, _ = feet.ground(skating_walk(slide=0.0))
    g, offsets = feet.ground(j + np.array([0.0, above, 0.0]))
    if moved:
        assert abs(offsets.mean() + above) < 0.003
    else:
        np.testing.assert_array_equal(offsets, 0.0)


@pytest.mark.parametrize("below,shifted", [(0.9e-5, False), (2e-5, True)])
def test_a_foot_a_float_rounding_below_the_floor_does_not_count_as_sunk(below, shifted):
    """A motion resting 1 cm up (within the 2 cm) stays there unless a foot joint is more than 1e-5 m
    (float32 rounding and refit noise) below the floor; either way nothing stays below it."""
    j, _ = feet.ground(skating_walk(slide=0.0))
    j[..., 1] += 0.01
    j[30, 10, 1] = -below
    g, offsets = feet.ground(j)
    assert bool(np.median(offsets) < -0.005) is shifted
    assert g[:, [7, 8, 10, 11], 1].min() >= 0.0


def test_lift_is_smooth_and_at_least_what_each_frame_needs():
    j = still_feet(0.0, 0.0)
    j[20, 10, 1] = -0.03
    lift = feet.lift_offsets(j)
    assert lift[20] >= 0.03 and lift[0] == 0.0 and lift[-1] == 0.0
    assert (lift[16:25] > 0).all() and np.abs(np.diff(lift)).max() < 0.03      # spread over its neighbours


def test_two_bone_ik_reaches_or_stretches_toward_the_target():
    hip, knee, ankle = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.55, 0.05]), np.array([0.0, 0.1, 0.0])
    for target, reach in ((np.array([0.1, 0.2, 0.2]), True), (np.array([0.0, -0.5, 0.0]), False)):
        k, a = feet.two_bone_ik(hip, knee, ankle, target)
        np.testing.assert_allclose(np.linalg.norm(k - hip), np.linalg.norm(knee - hip), atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(a - k), np.linalg.norm(ankle - knee), atol=1e-9)
        if reach:
            np.testing.assert_allclose(a, target, atol=1e-9)
        else:                                        # out of reach: straight toward it
            direction = (target - hip) / np.linalg.norm(target - hip)
            np.testing.assert_allclose((a - hip) / np.linalg.norm(a - hip), direction, atol=1e-5)


# ----------------------------------------------------------------------------- motion files
@pytest.mark.parametrize("fps,ok", [(1000, True), (1000.5, False), (1e-3, True), (0, False), (-30, False),
                                    (np.float32(30), True), (True, False), (float("nan"), False)])
def test_fps_in_zero_to_1000(fps, ok):
    if ok:
        assert check_fps(fps) == float(fps)
    else:
        with pytest.raises(ValueError, match=r"fps must be a positive number \(at most 1000\)"):
            check_fps(fps)


@pytest.mark.parametrize("shape,kind", [((5, 272), "features"), ((1, 5, 272), "features"), ((5, 22, 3), "joints"),
                                        ((1, 5, 22, 3), "joints"), ((5, 66), "joints"), ((1, 22, 3), "joints")])
def test_motion_layouts(shape, kind):
    assert motion_kind(np.zeros(shape)) == kind


@pytest.mark.parametrize("shape", [(5, 271), (5, 22, 2), (5, 21, 3), (2, 5, 272), (5, 67), (272,)])
def test_other_layouts_are_refused(shape):
    with pytest.raises(ValueError, match=r"must be 272-dim features \(frames, 272\) or joints"):
        motion_kind(np.zeros(shape))


def test_one_bad_value_among_good_joints_is_refused():
    for where in (0, -1):
        j = np.zeros((6, 22, 3))
        j.reshape(-1)[where] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            to_joints(j, name="walk.npy")
        with pytest.raises(ValueError, match="NaN"):
            feet.foot_contacts(j)


def test_make_rig_other_skeleton_is_grounded_by_the_motions_contacts(motion):
    r = make_rig(motion, "smpl-neutral", "solved")
    j = r.joints()[:, :22]
    planted = feet.foot_contacts(motion.joints)
    low = np.where(planted, j[:, [10, 11], 1], np.inf).min(1)
    assert np.percentile(np.abs(low[np.isfinite(low)]), 90) < 0.01 and j[:, [7, 8, 10, 11], 1].min() > -1e-4


# ----------------------------------------------------------------------------- the glTF body, read with pygltflib
def accessor(gltf, index: int) -> np.ndarray:
    """An accessor's data (tightly packed, as glTF writers without byteStride leave it)."""
    a = gltf.accessors[index]
    view = gltf.bufferViews[a.bufferView]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}[a.componentType]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[a.type]
    data = np.frombuffer(gltf.binary_blob(), dtype, count=a.count * width, offset=view.byteOffset + (a.byteOffset or 0))
    return data.reshape(a.count, width) if width > 1 else data


@pytest.fixture(scope="module")
def glb(motion, tmp_path_factory):
    path = tmp_path_factory.mktemp("glb") / "walk.glb"
    write_file("glb", path, motion)
    return GLTF2().load(str(path)), make_rig(motion)


def test_body_is_closed_outward_and_on_the_floor(glb):
    """Every body part is a closed surface (each edge in two triangles, once each way), its faces wind
    counter-clockwise seen from outside (along the stored unit normals), the left parts lie on +X and the
    right ones on -X, and the soles rest on the floor: the lowest vertex at the lowest joint's height (y = 0)."""
    gltf, rig = glb
    names = {m.name: i for i, m in enumerate(gltf.materials)}
    assert set(names) == {"centre", "left", "right"}
    lowest = []
    for prim in gltf.meshes[0].primitives:
        v = accessor(gltf, prim.attributes.POSITION).astype(np.float64)
        n = accessor(gltf, prim.attributes.NORMAL).astype(np.float64)
        tris = accessor(gltf, prim.indices).reshape(-1, 3).astype(np.int64)
        directed = {(int(a), int(b)) for t in tris for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
        assert len(directed) == 3 * len(tris)                                    # no directed edge twice
        assert all((b, a) in directed for a, b in directed)                      # and every one closed
        face = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
        solid = np.linalg.norm(face, axis=-1) > 1e-12         # (the head sphere's equator band is flat)
        assert (np.einsum("ij,ij->i", face, n[tris].sum(1))[solid] > 0).all() and solid.mean() > 0.95
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
        side = {names["left"]: 1, names["right"]: -1}.get(prim.material, 0)
        if side:                                   # (the hip capsules start at the pelvis, on the midline)
            assert side * np.median(v[:, 0]) > 0.1 and (side * v[:, 0] > -0.1).all()
        lowest.append(v[:, 1].min())
    assert abs(min(lowest)) < 1e-3                    # the motion skeleton's rest pose: lowest joint on y = 0


def test_skin_binds_the_rest_pose_and_the_head_is_scaled_with_the_body(glb):
    gltf, rig = glb
    rest = np.zeros((24, 3))
    for k in range(24):
        rest[k] = rig.offsets[k] + (rest[SMPL_PARENTS[k]] if k else 0.0)
    ibm = accessor(gltf, gltf.skins[0].inverseBindMatrices).reshape(24, 4, 4).transpose(0, 2, 1)   # column-major
    moved = np.einsum("jab,jb->ja", ibm, np.concatenate([rest, np.ones((24, 1))], 1))
    np.testing.assert_allclose(moved, np.tile([0.0, 0.0, 0.0, 1.0], (24, 1)), atol=1e-6)   # each joint to the origin
    # the head: a sphere on joint 15 of radius 0.1 m for a 1.7 m body (joints' span + the head's radius)
    for prim in gltf.meshes[0].primitives:
        joints = accessor(gltf, prim.attributes.JOINTS_0)[:, 0]
        weights = accessor(gltf, prim.attributes.WEIGHTS_0)
        np.testing.assert_array_equal(weights, np.tile([1.0, 0.0, 0.0, 0.0], (len(weights), 1)))
        if (joints == 15).any():
            head = accessor(gltf, prim.attributes.POSITION)[joints == 15].astype(np.float64)
    radius = np.linalg.norm(head - head.mean(0), axis=-1)
    height = rest[:, 1].max() - rest[:, 1].min()
    np.testing.assert_allclose(radius, 0.1 * (height + 0.1) / 1.7, rtol=1e-4)


def test_animation_keys_are_the_rigs_rotations_at_30_fps(glb):
    gltf, rig = glb
    anim = gltf.animations[0]
    T = len(rig.root)
    by_target = {(c.target.node, c.target.path): anim.samplers[c.sampler] for c in anim.channels}
    assert len(by_target) == 23 and (0, "translation") in by_target
    times = accessor(gltf, by_target[(0, "rotation")].input)
    np.testing.assert_allclose(times, np.arange(T) / 30.0, atol=1e-6)
    np.testing.assert_allclose(accessor(gltf, by_target[(0, "translation")].output), rig.root, atol=1e-5)
    for j in (0, 4, 16, 21):
        q = accessor(gltf, by_target[(j, "rotation")].output).astype(np.float64)          # (x, y, z, w)
        np.testing.assert_allclose(Rotation.from_quat(q).as_matrix(), rig.rotations[:, j], atol=1e-5)
        assert (np.einsum("ti,ti->t", q[1:], q[:-1]) >= 0).all()                          # sign-continuous
        assert by_target[(j, "rotation")].interpolation == "LINEAR"


# ----------------------------------------------------------------------------- rigs differ by their names only
@pytest.mark.parametrize("skeleton,rotations", [("smpl-neutral", "model"), ("motion", "solved"),
                                                ("smpl-neutral", "solved")])
def test_a_mixamo_file_is_the_smpl_file_with_mixamos_names(skeleton, rotations, tmp_path):
    """The rig only renames the bones: every channel of every frame is the same, in every pairing (the
    converter's smpl-neutral + model too, whose root is the model's translation on SMPL's J0)."""
    from test_io_bvh import motion_features

    from motionstreamer.io.bvh import features_to_bvh

    features = motion_features(T=12)
    files = {rig: features_to_bvh(tmp_path / f"{rig}.bvh", features, skeleton=skeleton, rotations=rotations, rig=rig)
             for rig in ("smpl", "mixamo")}
    smpl, mixamo = (Bvh(files[r].read_text()) for r in ("smpl", "mixamo"))
    rename = dict(zip(SMPL_NAMES, (f"mixamorig:{n}" for n in MIXAMO)))
    assert [rename[n] for n in smpl.get_joints_names()] == mixamo.get_joints_names()
    np.testing.assert_array_equal(np.array(smpl.frames, dtype=float), np.array(mixamo.frames, dtype=float))
    if skeleton == "smpl-neutral" and rotations == "model":          # the converter: root = J0 + (tau_x, h, tau_z)
        from motionstreamer.representation.features import recover_rotations
        _, translation = recover_rotations(features)
        root = np.array(smpl.frames, dtype=float)[:, :3]
        np.testing.assert_allclose(root, translation + SMPL_J0, atol=2e-4)


def test_bad_frame_header_is_named_at_its_line(tmp_path):
    from motionstreamer.io.bvh import read_bvh, write_bvh

    rotations = np.tile(np.eye(3), (3, 22, 1, 1))
    text = write_bvh(tmp_path / "ok.bvh", rotations, np.zeros((3, 3))).read_text()
    line = text.splitlines().index("Frames: 3") + 1
    (tmp_path / "bad.bvh").write_text(text.replace("Frames: 3", "Frames: three"))
    with pytest.raises(ValueError, match=rf"bad\.bvh:{line}: bad Frames / Frame Time values"):
        read_bvh(tmp_path / "bad.bvh")


def test_one_non_finite_value_keeps_the_glb_from_being_written(motion, tmp_path):
    from motionstreamer.io.gltf import write_glb

    for field, where in (("rotations", 0), ("rotations", -1), ("root", 0), ("root", -1)):
        r = make_rig(motion)
        getattr(r, field).reshape(-1)[where] = np.nan
        with pytest.raises(ValueError, match="contain NaN/inf"):
            write_glb(tmp_path / "x.glb", r)
    assert list(tmp_path.iterdir()) == []


def test_blender_addon_zip_is_never_overwritten_unasked(tmp_path, capsys):
    from motionstreamer.cli import main

    out = tmp_path / "addon.zip"
    out.write_bytes(b"mine")
    with pytest.raises(SystemExit) as e:
        main(["blender-addon", "--out", str(out)])
    assert e.value.code == 2 and "exists; give --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main(["blender-addon", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:2] == b"PK"                                       # a zip now


# ----------------------------------------------------------------------------- the clean-up's ramps and thresholds
def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def bent_stance(T: int, hover: float = 0.0) -> np.ndarray:
    """T frames of a standing body with bent knees (the legs can reach up and down), its lowest joints
    (the feet) `hover` above the floor."""
    from motionstreamer.representation.skeleton import forward_kinematics

    rot = np.tile(np.eye(3), (T, 22, 1, 1))
    for joint, angle in ((1, -0.25), (2, -0.25), (4, 0.5), (5, 0.5), (7, -0.25), (8, -0.25)):
        rot[:, joint] = Rotation.from_rotvec([angle, 0.0, 0.0]).as_matrix()
    j = forward_kinematics(rot, np.zeros((T, 3)))
    j[..., 1] += hover - j[:, [10, 11], 1].min()
    return j


def test_offline_clean_up_lowers_a_planted_foot_with_symmetric_ramps():
    """A foot hovering 3 cm up, planted over frames [10, 30) (contacts given): inside, it comes down to
    the floor, fully from the 5th frame to the 5th-last (blend 5) along a smoothstep ramp, the same at
    both ends; outside the contact it is never pulled down."""
    j = bent_stance(40, hover=0.03)
    contacts = np.zeros((40, 2), bool)
    contacts[10:30, 0] = True
    clean, _ = feet.clean_feet(j, contacts=contacts)
    y = clean[:, 10, 1]
    down = 1 - y / j[:, 10, 1]
    ramp = smoothstep(np.arange(1, 6) / 6)
    np.testing.assert_allclose(down[10:15], ramp, atol=1e-9)
    np.testing.assert_allclose(down[25:30], ramp[::-1], atol=1e-9)
    np.testing.assert_allclose(down[15:25], 1.0, atol=1e-9)
    np.testing.assert_allclose(y[:10], j[:10, 10, 1], atol=1e-12)
    np.testing.assert_allclose(y[30:], j[30:, 10, 1], atol=1e-12)
    np.testing.assert_allclose(clean[:, 11], j[:, 11], atol=1e-12)          # the other foot: no contact, untouched


@pytest.mark.parametrize("height,released", [(0.074, False), (0.076, True)])
def test_a_live_planted_foot_lets_go_above_1_5_times_the_height_threshold(height, released):
    """FootCleaner: planted while low and slow; it lets go when the foot rises above 1.5 x 5 cm."""
    j = bent_stance(20)
    lift = np.zeros((20, 2, 3))
    lift[10:, 0, 1] = np.linspace(0.0, height - j[0, 10, 1], 10)            # a slow rise: 0.25 m/s at most
    j = feet.move_feet(j, lift)
    np.testing.assert_allclose(j[-1, 10, 1], height, atol=1e-9)
    cleaner = feet.FootCleaner()
    cleaner(j)
    contacts = np.array(cleaner.contacts)
    assert contacts[:10, 0].all() and contacts[-1, 0] != released


def test_lift_is_the_max_filter_then_the_gaussian_of_scipy():
    """lift_offsets against scipy.ndimage: a 9-frame maximum (4 frames each side) smoothed by a gaussian
    of sigma 2, never below what a frame needs."""
    from scipy import ndimage

    j = still_feet(0.0, 0.0)
    j[20, 10, 1], j[31, 11, 1] = -0.03, -0.01
    need = np.maximum(0.0, -j[:, [7, 8, 10, 11], 1].min(1))
    want = np.maximum(need, ndimage.gaussian_filter1d(ndimage.maximum_filter1d(need, 9, mode="nearest"), 2.0,
                                                     mode="nearest"))
    np.testing.assert_allclose(feet.lift_offsets(j), want, atol=1e-12)


def test_contacts_of_a_single_frame():
    one = still_feet(0.0, 0.0, T=1)
    one[0, 11, 1] = 0.2
    np.testing.assert_array_equal(feet.foot_contacts(one), [[True, False]])
    np.testing.assert_array_equal(feet.foot_speed(one), np.zeros((1, 2)))     # (T, 2): no motion in one frame


def test_without_a_blend_the_contact_still_ramps_at_its_two_ends():
    """blend=0: no fade outside the contact, and the vertical correction still ramps at the contact's
    first and last frames (half way there), full in between."""
    j = bent_stance(40, hover=0.03)
    contacts = np.zeros((40, 2), bool)
    contacts[10:30, 0] = True
    clean, _ = feet.clean_feet(j, contacts=contacts, blend=0)
    down = 1 - clean[:, 10, 1] / j[:, 10, 1]
    np.testing.assert_allclose(down[[10, 29]], 0.5, atol=1e-9)
    np.testing.assert_allclose(down[11:29], 1.0, atol=1e-9)
    np.testing.assert_allclose(down[:10], 0.0, atol=1e-9)
