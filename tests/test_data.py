"""Training data: augmentation geometry, targets, sampling, the dataset over unified HDF5 files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from b2s_core.data.augment import (
    BevAug,
    BevAugConfig,
    ImageAug,
    ImageAugConfig,
    aug_from_img_matrix,
    bev_from_ego_matrix,
    draw_image_aug,
    flip_grid,
    warp_image,
)
from b2s_core.data.dataset import IMAGENET_MEAN, IMAGENET_STD, DataConfig, DataError, OccTrainDataset, collate
from b2s_core.data.sampler import CyclingLoader, EpochSampler
from b2s_core.data.targets import binary_from_semantics, dense_top2
from b2s_core.data.toy import TOY_GRID, toy_cameras, write_toy_dataset
from b2s_core.records import OccFrame
from b2s_core.taxonomy import IGNORE_INDEX, OCC3D

FINAL_HW = (64, 176)


def _bright_spot(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (u, v) centroid of the brightest pixels."""
    gray = image if image.ndim == 2 else image.mean(axis=-1)
    v, u = np.nonzero(gray >= gray.max() * 0.8)
    return np.array([u.mean(), v.mean()])


@pytest.mark.parametrize("seed", range(6))
def test_warp_follows_the_pixel_transform(seed):
    rng = np.random.default_rng(seed)
    H, W = 96, 264
    u, v = rng.uniform(60, 200), rng.uniform(40, 80)
    image = Image.new("L", (W, H), 0)
    ImageDraw.Draw(image).ellipse((u - 3, v - 3, u + 3, v + 3), fill=255)
    aug = draw_image_aug(rng, ImageAugConfig(rotation_deg=(-20, 20)), (H, W), FINAL_HW)
    aug = ImageAug(aug.scale, aug.crop_xy, bool(seed % 2), aug.rotation_deg)  # both flip states
    aug_from_img = aug_from_img_matrix(aug, FINAL_HW)
    warped = np.asarray(warp_image(image, aug_from_img, FINAL_HW), dtype=np.float32)
    expected = (aug_from_img @ np.array([u, v, 1.0]))[:2]
    assert np.linalg.norm(_bright_spot(warped) - expected) < 1.0


def test_test_time_image_transform_is_a_plain_resize_and_bottom_crop():
    aug = draw_image_aug(None, ImageAugConfig(), (900, 1600), (256, 704))
    assert aug.scale == pytest.approx(0.44) and not aug.flip and aug.rotation_deg == 0
    assert aug.crop_xy == (0, 396 - 256)


def test_bev_flip_maps_voxel_centres_like_the_grid_flip():
    grid = TOY_GRID
    aug = BevAug(flip_x=True, flip_y=True)
    bev_from_ego = bev_from_ego_matrix(aug, grid)
    values = np.zeros(grid.shape, dtype=np.uint8)
    values[3, 5, 2] = 1
    flipped = flip_grid(values, aug)
    (i, j, k), = np.argwhere(flipped == 1)
    moved = bev_from_ego[:3, :3] @ grid.center_of(np.array([3, 5, 2])) + bev_from_ego[:3, 3]
    np.testing.assert_allclose(moved, grid.center_of(np.array([i, j, k])))


def _one_voxel_file(path, voxel=(22, 12, 3)):
    """A frame with one occupied voxel, painted as a white disc into a black front-camera image."""
    from b2s_core.occfile import OccWriter

    cameras = toy_cameras((96, 264), yaws_deg=(0.0,))
    camera = cameras[0]
    sem = np.full(TOY_GRID.shape, OCC3D.free_index, dtype=np.uint8)
    sem[voxel] = OCC3D.class_names.index("car")
    center = TOY_GRID.center_of(np.array(voxel))
    x_cam = np.linalg.inv(camera.ego_from_cam) @ np.append(center, 1.0)
    u, v, w = camera.intrinsic @ x_cam[:3]
    image = Image.new("RGB", (camera.width, camera.height), (0, 0, 0))
    ImageDraw.Draw(image).ellipse((u / w - 3, v / w - 3, u / w + 3, v / w + 3), fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the spot stays exactly where it was drawn
    camera.image_bytes = buffer.getvalue()
    frame = OccFrame(scene="s", token="t0", timestamp=0, global_from_ego=np.eye(4), cameras=cameras,
                     occupancy=sem != OCC3D.free_index, semantics=sem)
    with OccWriter(path, grid=TOY_GRID, taxonomy=OCC3D, source="test", camera_names=[camera.name]) as w:
        w.write_scene("s", [frame])
    return path


@pytest.mark.parametrize("flip_x,flip_y", [(False, False), (True, False), (False, True), (True, True)])
def test_voxel_projection_follows_image_and_bev_augmentation(tmp_path, flip_x, flip_y):
    """The acceptance test: after augmentation, the occupied voxel of the (flipped) labels projects
    through the (augmented) img_from_cam and ego_from_cam onto the painted spot of the (warped) image."""
    path = _one_voxel_file(tmp_path / "one.h5")
    config = DataConfig(image_hw=FINAL_HW, image_aug=ImageAugConfig(rotation_deg=(-15, 15)),
                        bev_aug=BevAugConfig(float(flip_x), float(flip_y)))
    dataset = OccTrainDataset([path], config)
    moved = []
    for epoch in range(4):  # four different image augmentations
        sample = dataset[(epoch, 0)]
        (index,), = [np.argwhere(sample["binary"].numpy() == 1)]
        moved.append(tuple(index))
        center = TOY_GRID.center_of(index)
        cam_from_ego = np.linalg.inv(sample["ego_from_cam"][0].double().numpy())
        x_cam = cam_from_ego[:3, :3] @ center + cam_from_ego[:3, 3]
        pixel = sample["img_from_cam"][0].double().numpy() @ x_cam
        expected = pixel[:2] / pixel[2]
        image = sample["images"][0].permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN  # (H, W, 3) in 0..1
        assert np.linalg.norm(_bright_spot(image) - expected) < 1.5
    X, Y, _ = TOY_GRID.shape
    assert moved[0] == (X - 1 - 22 if flip_x else 22, Y - 1 - 12 if flip_y else 12, 3)


def test_binary_target_from_semantics_keeps_ignore():
    sem = np.array([[[17, 4, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(binary_from_semantics(sem, 17), [[[0, 1, IGNORE_INDEX]]])


def test_dense_top2_scatters_in_c_order_and_normalises():
    occupancy = np.zeros((2, 2, 2), bool)
    occupancy[0, 1, 1] = occupancy[1, 0, 0] = True
    labels, probs = dense_top2(occupancy, np.array([[4, 7], [11, 4]], np.uint8),
                               np.array([[2.0, 0.0], [0.0, 0.0]], np.float16), free_index=17)
    assert tuple(labels[0, 1, 1]) == (4, 7) and tuple(labels[1, 0, 0]) == (11, 4)
    assert probs[0, 1, 1, 0] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-3)
    assert probs[1, 0, 0, 0] == pytest.approx(0.5)
    assert tuple(labels[0, 0, 0]) == (17, 17) and tuple(probs[0, 0, 0]) == (1.0, 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="occupied"):
        dense_top2(occupancy, np.zeros((3, 2), np.uint8), np.zeros((3, 2), np.float16), 17)


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    gt = write_toy_dataset(root / "gt.h5", 3, seed=1)
    soft = write_toy_dataset(root / "soft.h5", 2, seed=2, top2=True)
    binary = write_toy_dataset(root / "bin.h5", 2, seed=3, with_semantics=False, mask_camera=True)
    return gt, soft, binary


def test_dataset_sample_shapes_and_mixed_hard_soft_batch(toy_files):
    gt, soft, binary = toy_files
    dataset = OccTrainDataset([gt, soft], DataConfig(image_hw=FINAL_HW, need_semantics=True))
    assert len(dataset) == 5
    hard_sample, soft_sample = dataset[(0, 0)], dataset[(0, 4)]
    assert hard_sample["images"].shape == (2, 3, *FINAL_HW)
    assert hard_sample["img_from_cam"].shape == (2, 3, 3) and hard_sample["ego_from_cam"].shape == (2, 4, 4)
    assert "top2_labels" in soft_sample and "top2_labels" not in hard_sample
    batch = collate([hard_sample, soft_sample])
    assert batch["top2_labels"].shape == (2, *TOY_GRID.shape, 2)
    # the hard frame in Top2 form: its own label with probability 1
    np.testing.assert_array_equal(batch["top2_labels"][0, ..., 0], hard_sample["semantics"])
    assert torch.all(batch["top2_probs"][0, ..., 0] == 1)
    # the binary target of a labelled frame is derived from its semantics (B*)
    np.testing.assert_array_equal(hard_sample["binary"], (hard_sample["semantics"] != OCC3D.free_index).to(torch.uint8))

    binary_only = OccTrainDataset([binary], DataConfig(image_hw=FINAL_HW))
    sample = binary_only[(0, 1)]
    assert "semantics" not in sample and sample["mask_camera"].dtype == torch.bool
    with pytest.raises(DataError, match="no semantic labels"):
        OccTrainDataset([binary], DataConfig(image_hw=FINAL_HW, need_semantics=True))[0]


def test_augmentation_depends_on_epoch_and_index_only(toy_files):
    gt, _, _ = toy_files
    dataset = OccTrainDataset([gt], DataConfig(image_hw=FINAL_HW))
    a, b, c = dataset[(3, 1)], dataset[(3, 1)], dataset[(4, 1)]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["img_from_cam"], b["img_from_cam"])
    assert not torch.equal(a["img_from_cam"], c["img_from_cam"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=[(3, 1)], num_workers=1, collate_fn=collate)
    from_worker = next(iter(loader))
    assert torch.equal(from_worker["images"][0], a["images"])  # a worker draws the same augmentation


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        OccTrainDataset([tmp_path / "nope.h5"], DataConfig(image_hw=FINAL_HW))


def test_epoch_sampler_splits_ranks_and_resumes_mid_epoch():
    ranks = [EpochSampler(10, num_replicas=2, rank=r, seed=0, shuffle=True, drop_last=True) for r in range(2)]
    for s in ranks:
        s.start_at(2)
    keys = [list(s) for s in ranks]
    assert {e for k in keys for e, _ in k} == {2}
    assert not set(i for _, i in keys[0]) & set(i for _, i in keys[1])
    ranks[0].start_at(2, skip=3)
    assert list(ranks[0]) == keys[0][3:]
    ranks[0].start_at(3)
    assert list(ranks[0]) != keys[0]  # a new shuffle each epoch


def test_cycling_loader_restores_its_position():
    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, key):
            return key[1]

    dataset = Echo()

    def make():
        sampler = EpochSampler(7, num_replicas=1, rank=0, seed=0, shuffle=True, drop_last=True)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, drop_last=True,
                                             collate_fn=list)
        return CyclingLoader(loader, 2)

    straight = make()
    reference = [straight.next() for _ in range(8)]  # crosses two epoch ends (3 batches per epoch)
    resumed = make()
    resumed.restore(5)
    assert [resumed.next() for _ in range(3)] == reference[5:]
