"""The synthetic world: exact kernels against their references, and the written datasets against
the real readers (nuscenes-devkit), the exact truth and the rules real label sets follow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from b2s_core.grids import GRID_PRESETS, VoxelGrid
from b2s_core.synth import SynthError, load_ground_truth, load_manifest, write_dataset
from b2s_core.synth.groundtruth import semantic_occupancy
from b2s_core.synth.labels import label_voxels
from b2s_core.synth.primitives import BOX, CYLINDER, SPHERE, Primitives, make
from b2s_core.synth.raycast import GROUND, NOTHING, cast_rays, cast_rays_reference
from b2s_core.synth.sensors import NUSCENES_CAMERAS, camera_rays
from b2s_core.synth.world import build_world
from b2s_core.taxonomy import map_labels

FREE = 17


# -- kernels --------------------------------------------------------------------------------------
def _toy_shapes() -> Primitives:
    return Primitives.concat([
        make(BOX, (10.0, 0.5, 1.0), (2.0, 1.0, 1.0), 0.4, 4, 0),
        make(CYLINDER, (6.0, -4.0, 1.5), (0.5, 0.5, 1.5), 0.0, 15),
        make(SPHERE, (12.0, 6.0, 3.0), (2.0, 2.0, 2.0), 0.0, 16),
        make(BOX, (-8.0, 0.0, 4.0), (1.0, 5.0, 4.0), -0.2, 15),
    ])


def test_cast_rays_matches_reference_on_toy_shapes():
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(30, 40, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origin = np.array([0.0, 0.0, 1.5])
    fast = cast_rays(_toy_shapes(), origin, dirs, max_range=50.0, tile=(4, 8))
    slow = cast_rays_reference(_toy_shapes(), origin, dirs, max_range=50.0)
    np.testing.assert_array_equal(fast.primitive, slow.primitive)
    np.testing.assert_allclose(fast.distance, slow.distance)
    assert {0, 1, 2, 3, GROUND, NOTHING} <= set(np.unique(fast.primitive).tolist())


def test_cast_rays_matches_reference_on_a_world_camera():
    world = build_world(3, 0, 1.0)
    prims = world.snapshot(0.0)
    pose = world.global_from_ego(0.0)
    cam = NUSCENES_CAMERAS[0]
    global_from_cam = pose @ cam.ego_from_cam
    dirs = camera_rays(cam, (24, 14)) @ global_from_cam[:3, :3].T
    fast = cast_rays(prims, global_from_cam[:3, 3], dirs, max_range=120.0, tile=(5, 7))
    slow = cast_rays_reference(prims, global_from_cam[:3, 3], dirs, max_range=120.0)
    np.testing.assert_array_equal(fast.primitive, slow.primitive)
    np.testing.assert_allclose(fast.distance, slow.distance)
    assert (fast.primitive >= 0).sum() > 50  # the picture is not just ground and sky


def test_shadows_match_brute_force():
    from b2s_core.synth.raycast import intersect, shadowed

    world = build_world(2, 1, 1.0)
    prims = world.snapshot(0.0)
    rng = np.random.default_rng(3)
    center = world.global_from_ego(0.0)[:3, 3]
    points = np.concatenate([center[:2] + rng.uniform(-40, 40, (400, 2)), np.zeros((400, 1))], axis=1)
    normals = np.tile([0.0, 0.0, 1.0], (400, 1))
    fast = shadowed(prims, points, normals, world.sun)
    every = np.arange(len(prims))
    slow = np.array([np.isfinite(intersect(prims, every, p + 1e-3 * n, np.tile(world.sun, (len(prims), 1)))).any()
                     for p, n in zip(points, normals)])
    np.testing.assert_array_equal(fast, slow)
    assert 0 < slow.sum() < 400


def test_box_hit_distance_is_exact():
    box = make(BOX, (10.0, 0.0, 1.0), (1.0, 1.0, 1.0), 0.0, 4)
    hits = cast_rays(box, np.array([0.0, 0.0, 1.0]), np.array([[[1.0, 0.0, 0.0]]]), max_range=50.0)
    assert hits.distance[0, 0] == pytest.approx(9.0)
    np.testing.assert_allclose(hits.normal[0, 0], [-1.0, 0.0, 0.0])


def test_label_voxels_take_the_solid_class_or_the_nearest_one():
    truth = np.full((8, 8, 6), FREE, np.uint8)
    truth[:, :, 0] = 11  # ground layer
    truth[5:7, 5:7, 1:3] = 4  # a car on it
    occupied = np.zeros_like(truth, dtype=bool)
    occupied[0, 0, 0] = True  # on the ground: its own class
    occupied[2, 2, 1] = True  # just above the ground (range noise): the nearest solid, the ground below
    occupied[4, 5, 2] = True  # beside the car: the car, one voxel away, before the ground two below
    occupied[0, 7, 5] = True  # farther than LABEL_REACH (2) from every solid: stays unlabelled
    labels = label_voxels(occupied, truth)
    assert labels[0, 0, 0] == 11 and labels[2, 2, 1] == 11 and labels[4, 5, 2] == 4 and labels[0, 7, 5] == FREE
    assert (labels[~occupied] == FREE).all()  # solid interiors the LiDAR never saw are not labels


def test_semantic_occupancy_is_exact_for_an_axis_aligned_box():
    grid = VoxelGrid((-2.0, -2.0, -1.0), (2.0, 2.0, 3.0), (0.5, 0.5, 0.5), "toy")
    box = make(BOX, (0.25, 0.0, 1.0), (0.5, 0.75, 1.0), 0.0, 4, 7)  # x in [-0.25, 0.75]: straddles voxels
    truth = semantic_occupancy(box, lambda xy: np.full(len(xy), 11, np.uint8), grid)
    occupied = np.argwhere(truth.semantics == 4)
    lo, hi = occupied.min(axis=0), occupied.max(axis=0)
    # x: [-0.25, 0.75] -> voxels 3..5; y: [-0.75, 0.75] -> 2..5; z: [0, 2] -> 2..5 (strict overlap)
    np.testing.assert_array_equal(lo, [3, 2, 2])
    np.testing.assert_array_equal(hi, [5, 5, 5])
    assert len(occupied) == 3 * 4 * 4
    assert (truth.instance[truth.semantics == 4] == 7).all()
    # the ground slab (-0.15, 0) fills layer 1 ([-0.5, 0]) only; the box starts exactly at z = 0
    assert (truth.semantics[:, :, 1] == 11).all() and (truth.semantics[:, :, 0] == FREE).all()


def test_world_is_deterministic_and_tracks_are_smooth():
    a, b = build_world(5, 1, 9.5), build_world(5, 1, 9.5)
    np.testing.assert_array_equal(a.snapshot(2.0).center, b.snapshot(2.0).center)
    boxes0, boxes1 = a.boxes(1.0), a.boxes(1.5)
    moved = np.linalg.norm(boxes1["center"] - boxes0["center"], axis=1)
    np.testing.assert_allclose(moved, np.linalg.norm(boxes0["velocity"], axis=1) * 0.5, atol=0.05)
    assert moved.max() > 1.0  # something moves


# -- the written dataset (session fixture) ------------------------------------------------------
@pytest.fixture(scope="module")
def manifest(synth_root):
    return load_manifest(synth_root)


@pytest.fixture(scope="module")
def nusc(manifest):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(manifest.nuscenes_version, str(manifest.path("nuscenes")), verbose=False)


def test_devkit_loads_scenes_samples_and_sweeps(nusc, manifest):
    assert [s["name"] for s in nusc.scene] == manifest.scene_names
    scene = nusc.scene[0]
    sample = nusc.get("sample", scene["first_sample_token"])
    assert set(sample["data"]) == {"LIDAR_TOP"} | {c.name for c in NUSCENES_CAMERAS}
    last = nusc.get("sample", scene["last_sample_token"])
    assert scene["nbr_samples"] == 3 and last["next"] == ""
    lidar = nusc.get("sample_data", last["data"]["LIDAR_TOP"])
    # 10 sweeps at 20 Hz between 2 Hz key frames, chained by prev
    chain = [lidar]
    while chain[-1]["prev"]:
        chain.append(nusc.get("sample_data", chain[-1]["prev"]))
    assert len(chain) == 21 and sum(sd["is_key_frame"] for sd in chain) == 3
    assert np.all(np.diff([sd["timestamp"] for sd in chain[::-1]]) == 50_000)
    for sd in chain:
        assert (Path(nusc.dataroot) / sd["filename"]).is_file()
        # every sweep belongs to the sample nearest in time
        assert abs(nusc.get("sample", sd["sample_token"])["timestamp"] - sd["timestamp"]) <= 250_000


def test_devkit_point_clouds_and_multisweep(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud

    sample = nusc.get("sample", nusc.scene[0]["last_sample_token"])
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(str(Path(nusc.dataroot) / sd["filename"]))
    assert pc.points.shape[0] == 4 and pc.points.shape[1] > 20_000
    multi, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=10)
    assert multi.points.shape[1] > 8 * pc.points.shape[1]
    assert times.max() == pytest.approx(0.45, abs=1e-6)


def test_devkit_boxes_contain_their_objects_points(nusc, manifest):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    scene = manifest.scene_names[0]
    truth = manifest.ground_truth(scene, 1)
    sample = nusc.get("sample", manifest.key_frames(scene)[1]["nuscenes_sample_token"])
    _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(str(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"])))
    np.testing.assert_array_equal(pc.points[:3], truth.lidar_points[:, :3].T)
    exact_sensor = (truth.exact_points_ego - truth.ego_from_lidar[:3, 3]) @ truth.ego_from_lidar[:3, :3]
    exact_sensor *= 1.0 + 1e-4 / np.linalg.norm(exact_sensor, axis=1, keepdims=True)  # 0.1 mm into the surface
    track_of = {nusc.get("instance", nusc.get("sample_annotation", b.token)["instance_token"])["token"]: b for b in boxes}
    checked = noisy_inside = noisy_total = 0
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        box = track_of[ann["instance_token"]]
        track = int(truth.boxes["track"][np.argmin(np.linalg.norm(truth.boxes["center"] - ann["translation"], axis=1))])
        mine = truth.point_instance == track
        assert mine.sum() == ann["num_lidar_pts"]
        if mine.sum() == 0:
            continue
        assert points_in_box(box, exact_sensor[mine].T).all(), ann["category_name"]
        noisy_inside += int(points_in_box(box, pc.points[:3, mine], wlh_factor=1.05).sum())
        noisy_total += int(mine.sum())
        checked += 1
    assert checked >= 5
    assert noisy_inside / noisy_total > 0.95  # the written (noisy) points, with 5% slack for range noise


def test_nuscenes_annotates_the_objects_the_lidar_saw(nusc, manifest):
    # nuScenes keeps boxes its sensors saw (a real key frame: 66 of 69 hold LiDAR points, the rest radar ones;
    # this world has no radar): every annotation has points, and every object within range that the key
    # sweep hit is annotated.
    for scene in manifest.scene_names:
        for key in manifest.key_frames(scene):
            truth = manifest.ground_truth(scene, key["index"])
            anns = [nusc.get("sample_annotation", a) for a in nusc.get("sample", key["nuscenes_sample_token"])["anns"]]
            assert anns and all(a["num_lidar_pts"] > 0 for a in anns)
            near = np.hypot(*(truth.boxes["center"][:, :2] - truth.global_from_ego[:2, 3]).T) < 75.0
            seen = near & (truth.boxes["num_lidar_pts"] > 0)
            assert len(anns) == seen.sum() < near.sum()  # some objects in range are hidden: not annotated


def test_lidar_hits_are_occupied_in_the_truth(manifest):
    for scene in manifest.scene_names:
        truth = manifest.ground_truth(scene, 2)
        origin = truth.ego_from_lidar[:3, 3]
        direction = truth.exact_points_ego - origin
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        inside_surface = truth.exact_points_ego + 1e-3 * direction  # just past the surface, into the solid
        for name in ("occ3d", "openoccupancy", "openscene"):
            if name not in truth.semantics:
                continue
            grid = GRID_PRESETS[name]
            index = grid.index_of(inside_surface)
            index = index[grid.inside(index)]
            labels = truth.semantics[name][index[:, 0], index[:, 1], index[:, 2]]
            assert (labels != FREE).all(), name
            if name in truth.mask_lidar:  # the voxels of the written (noisy) points are LiDAR-observed
                noisy = truth.lidar_points[:, :3] @ truth.ego_from_lidar[:3, :3].T + origin
                # a point within a micrometre of a voxel face (y = 0 straight ahead) lands on either side by rounding
                offset = (noisy - grid.origin) / np.asarray(grid.voxel_size)
                clear = np.all(np.abs(offset - np.round(offset)) > 1e-6, axis=1)
                index = grid.index_of(noisy[clear])
                index = index[grid.inside(index)]
                assert truth.mask_lidar[name][index[:, 0], index[:, 1], index[:, 2]].all()


def test_lidar_points_project_onto_pixels_of_their_class(manifest):
    truth = manifest.ground_truth(manifest.scene_names[0], 0)
    agree, total = 0, 0
    for c in range(len(truth.camera_names)):
        K, ego_from_cam = truth.camera_intrinsic[c], truth.camera_ego_from_cam[c]
        cam = (truth.exact_points_ego - ego_from_cam[:3, 3]) @ ego_from_cam[:3, :3]
        front = cam[:, 2] > 1.0
        uv = (cam[front] @ K.T)[:, :2] / cam[front, 2:3]
        labels_img = truth.camera_labels[c]
        H, W = labels_img.shape
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        u, v = uv[inside, 0].astype(int), uv[inside, 1].astype(int)
        depth = np.linalg.norm(cam[front][inside], axis=1)
        visible = depth <= truth.camera_distance[c][v, u].astype(np.float64) + 0.5  # not hidden from the camera
        agree += int((labels_img[v, u][visible] == truth.point_labels[front][inside][visible]).sum())
        total += int(visible.sum())
    assert total > 5_000
    assert agree / total > 0.9  # pixel quantisation at class borders is the only disagreement


def test_moving_boxes_follow_their_tracks(nusc):
    moved = 0
    for instance in nusc.instance:
        anns = []
        token = instance["first_annotation_token"]
        while token:
            anns.append(nusc.get("sample_annotation", token))
            token = anns[-1]["next"]
        for a, b in zip(anns, anns[1:]):
            assert a["size"] == b["size"]
            step = np.subtract(b["translation"], a["translation"])
            dt = (nusc.get("sample", b["sample_token"])["timestamp"] - nusc.get("sample", a["sample_token"])["timestamp"]) / 1e6
            velocity = nusc.box_velocity(a["token"])
            if np.linalg.norm(step) > 0.2:
                moved += 1
                yaw = 2 * np.arctan2(a["rotation"][3], a["rotation"][0])
                heading = np.array([np.cos(yaw), np.sin(yaw)])
                # straight-line speed along the box's own heading (curved roads bend it slightly)
                assert abs(np.dot(step[:2], heading)) / np.linalg.norm(step[:2]) > 0.95
                assert np.linalg.norm(step[:2]) / dt == pytest.approx(np.linalg.norm(velocity[:2]), rel=0.1)
    assert moved >= 5


def test_occ3d_and_openoccupancy_files_match_the_truth(manifest):
    scene = manifest.scene_names[1]
    for frame in manifest.key_frames(scene):
        truth = manifest.ground_truth(scene, frame["index"])
        with np.load(manifest.path("occ3d") / "gts" / scene / frame["nuscenes_sample_token"] / "labels.npz") as f:
            assert f["semantics"].dtype == np.uint8 and f["semantics"].shape == (200, 200, 16)
            np.testing.assert_array_equal(f["semantics"], truth.labels["occ3d"])
            np.testing.assert_array_equal(f["mask_camera"], truth.mask_camera["occ3d"])
            np.testing.assert_array_equal(f["mask_lidar"], truth.mask_lidar["occ3d"])
            assert 0.02 < f["mask_camera"].mean() < 0.9
            # Observed surfaces, as Occ3D's: the label voxels lie on (or within a voxel or two of) a solid of their
            # class, and the solids' interiors are not labelled.
            labelled = f["semantics"] != FREE
            exact = truth.semantics["occ3d"] != FREE
            assert (f["semantics"][labelled & exact] == truth.semantics["occ3d"][labelled & exact]).mean() > 0.97
            assert (labelled & exact).sum() > 0.9 * labelled.sum()
            interior = exact.copy()  # solid voxels whose six neighbours are solid too (the old solid labels: 21-40 %)
            interior[1:-1, 1:-1, 1:-1] &= (exact[2:, 1:-1, 1:-1] & exact[:-2, 1:-1, 1:-1] & exact[1:-1, 2:, 1:-1]
                                           & exact[1:-1, :-2, 1:-1] & exact[1:-1, 1:-1, 2:] & exact[1:-1, 1:-1, :-2])
            interior[[0, -1]] = interior[:, [0, -1]] = interior[:, :, [0, -1]] = False
            assert (labelled & interior).sum() < 0.12 * labelled.sum()  # the filled object boxes, no building interiors
        scene_token = next(s["nuscenes_scene_token"] for s in manifest.data["scenes"] if s["name"] == scene)
        rows = np.load(manifest.path("openoccupancy") / f"scene_{scene_token}" / "occupancy" / f"{frame['nuscenes_lidar_token']}.npy")
        # OpenOccupancy files are in the LIDAR_TOP frame (tests/test_openoccupancy_official.py): the ground,
        # 1.84 m below the sensor, is layer 15 (~94 %; the rest are observed surfaces up to 0.8 m above the road,
        # e.g. objects no annotation covers, that take the road's class as the nearest solid); each voxel centre
        # moved to the ego frame finds a solid of its class there, and the rows list surfaces only.
        ground_layers = np.bincount(rows[rows[:, 3] == 11, 0], minlength=40)
        assert ground_layers[15] > 0.85 * ground_layers.sum() and ground_layers[:15].sum() == 0
        in_lidar = np.array([-51.2, -51.2, -5.0]) + (rows[:, [2, 1, 0]] + 0.5) * 0.2
        ego = in_lidar @ truth.ego_from_lidar[:3, :3].T + truth.ego_from_lidar[:3, 3]
        grid = GRID_PRESETS["openoccupancy"]
        cell = grid.index_of(ego)
        keep = grid.inside(cell)
        expected = map_labels(truth.semantics["openoccupancy"], "occ3d", "openoccupancy")[tuple(cell[keep].T)]
        expected[expected == 255] = 0
        assert keep.mean() > 0.95 and (expected == rows[keep, 3]).mean() > 0.9
        assert len(rows) < 0.6 * (truth.semantics["openoccupancy"] != FREE).sum()  # surfaces (the solid files: ~1x)


def test_truth_has_every_class_family(manifest):
    seen = set()
    for scene in manifest.scene_names:
        for frame in manifest.key_frames(scene):
            seen |= set(np.unique(manifest.ground_truth(scene, frame["index"]).semantics["occ3d"]).tolist())
    for label in (4, 7, 11, 13, 14, 15, 16, FREE):  # car, pedestrian, road, sidewalk, terrain, manmade, vegetation
        assert label in seen


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    kwargs = dict(scenes=1, frames=1, formats=["nuscenes", "occ3d"], image_size=(64, 36))
    a = write_dataset(tmp_path / "a", seed=7, **kwargs)
    b = write_dataset(tmp_path / "b", seed=7, **kwargs)
    c = write_dataset(tmp_path / "c", seed=8, **kwargs)
    for rel in ("nuscenes/v1.0-mini/sample_annotation.json", "nuscenes/v1.0-mini/ego_pose.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
    ta = a.ground_truth("scene-0001", 0)
    tb = b.ground_truth("scene-0001", 0)
    np.testing.assert_array_equal(ta.lidar_points, tb.lidar_points)
    np.testing.assert_array_equal(ta.semantics["occ3d"], tb.semantics["occ3d"])
    assert json.loads((tmp_path / "a" / "synth_manifest.json").read_text())["seed"] == 7
    assert c.data["seed"] == 8


def test_bad_options_raise_clear_errors(tmp_path):
    with pytest.raises(SynthError, match="unknown format"):
        write_dataset(tmp_path, formats=["kitti"])
    with pytest.raises(SynthError, match="at least one"):
        write_dataset(tmp_path, frames=0)
    with pytest.raises(SynthError, match="not a synthetic dataset"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(Exception, match="not found"):
        load_ground_truth(tmp_path / "missing.npz")


def test_contact_sheet_shows_cameras_and_bev(manifest, tmp_path):
    from PIL import Image

    from b2s_core.synth.contact_sheet import save_contact_sheet

    path = save_contact_sheet(manifest, manifest.scene_names[0], 1, tmp_path / "sheet.png")
    sheet = np.asarray(Image.open(path))
    assert sheet.shape[1] > 3 * 160 and sheet.shape[0] >= 180
    cameras = sheet[:180, : 3 * 160].reshape(-1, 3)
    # sky, road (magenta albedo) and vegetation (green) are all in the pictures
    assert ((cameras[:, 2] > 150) & (cameras[:, 0] < 200) & (cameras[:, 1] > 120)).mean() > 0.05  # sky
    assert ((cameras[:, 0] > 120) & (cameras[:, 1] < 80) & (cameras[:, 2] > 120)).mean() > 0.05  # road
    assert ((cameras[:, 1] > cameras[:, 0] + 30) & (cameras[:, 1] > cameras[:, 2] + 30)).mean() > 0.02  # green


# -- nuPlan / OpenScene --------------------------------------------------------------------------
def _pcd(path: Path) -> tuple[dict, np.ndarray]:
    raw = path.read_bytes()
    end = raw.index(b"DATA binary\n") + len(b"DATA binary\n")
    header = dict(line.split(" ", 1) for line in raw[:end].decode().splitlines() if not line.startswith("#"))
    fields = header["FIELDS"].split()
    assert header["SIZE"].split() == ["4"] * len(fields) and header["TYPE"].split() == ["F"] * len(fields)
    points = np.frombuffer(raw[end:], dtype=np.float32).reshape(int(header["POINTS"]), len(fields))
    return header, points


def test_nuplan_db_follows_the_devkit_schema(manifest):
    import pickle
    import sqlite3

    root = manifest.path("nuplan")
    scene = manifest.data["scenes"][0]
    db = root / "splits" / "mini" / f"{scene['nuplan_log_name']}.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"log", "ego_pose", "lidar", "lidar_pc", "lidar_box", "track", "category", "scene", "camera", "image"} <= tables
    token, translation, rotation = con.execute("SELECT token, translation, rotation FROM lidar").fetchone()
    assert isinstance(token, bytes) and len(token) == 8
    assert isinstance(pickle.loads(translation), np.ndarray) and pickle.loads(rotation).shape == (4,)
    channels = [r[0] for r in con.execute("SELECT channel FROM camera ORDER BY channel")]
    assert channels == sorted(["CAM_F0", "CAM_L0", "CAM_R0", "CAM_L1", "CAM_R1", "CAM_L2", "CAM_R2", "CAM_B0"])
    K = pickle.loads(con.execute("SELECT intrinsic FROM camera WHERE channel = 'CAM_F0'").fetchone()[0])
    assert K.shape == (3, 3) and K[2, 2] == 1.0
    rows = con.execute("SELECT token, filename, timestamp FROM lidar_pc ORDER BY timestamp").fetchall()
    assert len(rows) == scene["num_sweeps"] and np.all(np.diff([r[2] for r in rows]) == 50_000)
    key = manifest.key_frames(scene["name"])[1]
    key_row = next(r for r in rows if r[0].hex() == key["nuplan_lidar_pc_token"])
    header, points = _pcd(root / "sensor_blobs" / key_row[1])
    assert header["FIELDS"].split()[:3] == ["x", "y", "z"]
    truth = manifest.ground_truth(scene["name"], 1)
    assert points.shape[0] == truth.lidar_points.shape[0]
    # same returns, expressed in the nuPlan LiDAR frame (same origin, axes along the ego)
    ego_from_sensor = truth.ego_from_lidar
    expected = truth.lidar_points[:, :3] @ ego_from_sensor[:3, :3].T
    np.testing.assert_allclose(points[:, :3], expected, atol=1e-4)
    boxes = con.execute(
        "SELECT lb.x, lb.y, lb.z, lb.length, lb.width, lb.height, c.name FROM lidar_box lb JOIN track t ON "
        "lb.track_token = t.token JOIN category c ON t.category_token = c.token WHERE lb.lidar_pc_token = ?",
        (key_row[0],)).fetchall()
    categories = {"vehicle", "bicycle", "pedestrian", "traffic_cone", "barrier", "czone_sign", "generic_object"}
    assert len(boxes) > 5 and {b[6] for b in boxes} <= categories
    images = con.execute("SELECT filename_jpg FROM image").fetchall()
    assert len(images) == 8 * len(manifest.key_frames(scene["name"]))
    assert all((root / "sensor_blobs" / f).is_file() for (f,) in images)


def test_openscene_meta_and_occupancy_match_the_truth(manifest):
    import pickle

    root = manifest.path("openscene")
    scene = manifest.data["scenes"][1]
    frames = pickle.loads((root / "meta_datas" / "mini" / f"{scene['nuplan_log_name']}.pkl").read_bytes())
    assert [f["token"] for f in frames] == [k["openscene_token"] for k in scene["key_frames"]]
    for frame, key in zip(frames, scene["key_frames"]):
        assert set(frame["cams"]) == {"CAM_F0", "CAM_L0", "CAM_R0", "CAM_L1", "CAM_R1", "CAM_L2", "CAM_R2", "CAM_B0"}
        assert (root / "sensor_blobs" / "mini" / frame["lidar_path"]).is_file()
        truth = manifest.ground_truth(scene["name"], key["index"])
        np.testing.assert_allclose(frame["ego2global_translation"], truth.global_from_ego[:3, 3])
        rows = np.load(root / frame["occ_gt_final_path"])
        dense = np.full((200, 200, 16), 16, np.uint8)
        flat = rows[:, 0]
        dense[flat % 200, (flat // 200) % 200, flat // 40000] = rows[:, 1]
        np.testing.assert_array_equal(dense, map_labels(truth.labels["openscene"], "occ3d", "openscene"))
        anns = frame["anns"]
        assert anns["gt_boxes"].shape == (len(anns["gt_names"]), 7)


def test_converters_read_every_written_format(manifest):
    converters = pytest.importorskip("converters")
    for source in ("nuscenes", "nuplan", "openscene"):
        kwargs = {"version": manifest.nuscenes_version} if source == "nuscenes" else {}
        reader = converters.open_reader(source, str(manifest.path(source)), **kwargs)
        # a nuPlan log holds several nuPlan scenes (manifest: nuplan_scene_names), each one b2s scene
        parts = {s["name"]: s["nuplan_scene_names"] if source == "nuplan" else [s["name"]] for s in manifest.data["scenes"]}
        assert reader.scene_names() == [name for names in parts.values() for name in names], source
        frames = [f for name in parts[manifest.scene_names[0]] for f in reader.read_scene(name)]
        assert len(frames) == 3, source
        truth = manifest.ground_truth(manifest.scene_names[0], 2)
        np.testing.assert_allclose(frames[2].global_from_ego, truth.global_from_ego, atol=1e-6)


def test_rendered_colours_identify_the_class(manifest):
    """The images carry class: each class's median pixel colour is nearest its own albedo (Occ3D palette)."""
    from PIL import Image

    from b2s_core.taxonomy import OCC3D

    scene = manifest.scene_names[0]
    truth = manifest.ground_truth(scene, 1)
    frame = manifest.key_frames(scene)[1]
    log = next(s["log_name"] for s in manifest.data["scenes"] if s["name"] == scene)
    albedo = np.asarray(OCC3D.colors, dtype=np.float64)
    right = wrong = 0
    for c, name in enumerate(truth.camera_names):
        jpeg = manifest.path("nuscenes") / "samples" / name / f"{log}__{name}__{frame['timestamp']}.jpg"
        rgb = np.asarray(Image.open(jpeg), dtype=np.float64)
        labels = truth.camera_labels[c]
        present = [k for k in np.unique(labels) if k < 17 and (labels == k).sum() >= 150]
        for k in present:
            median = np.median(rgb[labels == k], axis=0)
            # best brightness per candidate albedo (lighting scales colours by 0.4..1.1), then distance
            scale = np.clip((albedo @ median) / np.maximum((albedo**2).sum(1), 1), 0.35, 1.1)
            guess = int(np.argmin(np.linalg.norm(albedo * scale[:, None] - median, axis=1)[present]))
            right += present[guess] == k
            wrong += present[guess] != k
    assert right >= 10 and wrong <= right // 5


def test_nuplan_box_chains_follow_tracks(manifest):
    import sqlite3

    scene = manifest.data["scenes"][0]
    con = sqlite3.connect(f"file:{manifest.path('nuplan') / 'splits' / 'mini' / (scene['nuplan_log_name'] + '.db')}?mode=ro", uri=True)
    rows = con.execute("SELECT lb.token, lb.next_token, lb.prev_token, lb.track_token, lp.timestamp, lb.x, lb.y, lb.vx, lb.vy "
                       "FROM lidar_box lb JOIN lidar_pc lp ON lb.lidar_pc_token = lp.token").fetchall()
    by_token = {r[0]: r for r in rows}
    chained = 0
    for token, nxt, _prev, track, ts, x, y, vx, vy in rows:
        if nxt is None:
            continue
        n = by_token[nxt]
        assert n[3] == track and n[2] == token and n[4] == ts + 50_000
        # the position advances by the stored velocity over one 50 ms sweep
        assert np.hypot(n[5] - x - 0.05 * vx, n[6] - y - 0.05 * vy) < 0.02
        chained += 1
    assert chained > 100
