"""``b2s autolabel``: Top1 / Top2 pseudo-labels, TTA, round trip through the file, soft targets that train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _eval_data import SMALL, StandInConfig, StandInModel, make_frames, write_file

from b2s_core.apps.autolabel import AutolabelConfig, AutolabelError, autolabel_to_file, model_taxonomy, pseudo_labels
from b2s_core.apps.predict import ALL_FLIPS, iterate_batches, open_inputs, predict_logits
from b2s_core.models.occupied_set import given_occupancy
from b2s_core.occfile import OccDataset
from b2s_core.taxonomy import OCC3D

OFFBOARD = StandInConfig(offboard=True)


def reference_pseudo_labels(logits: np.ndarray, voxels: np.ndarray, free: int, with_free: bool):
    """Plain per-voxel loop: the two best classes of each voxel of ``voxels`` (free among them
    when ``with_free``: the paper's form), C order; free elsewhere."""
    semantics = np.full(voxels.shape, free, np.uint8)
    labels, values = [], []
    for flat in np.flatnonzero(voxels):
        i, j, k = np.unravel_index(flat, voxels.shape)
        scores = [(logits[c, i, j, k], c) for c in range(logits.shape[0]) if with_free or c != free]
        scores.sort(key=lambda s: -s[0])
        semantics[i, j, k] = scores[0][1]
        labels.append([scores[0][1], scores[1][1]])
        values.append([scores[0][0], scores[1][0]])
    return semantics, np.array(labels, np.uint8), np.array(values, np.float32).astype(np.float16)


def test_pseudo_labels_match_per_voxel_loop():
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    logits = rng.standard_normal((18, *shape)).astype(np.float32)
    logits[17] += 1.0  # the model says "free" for many voxels
    given = rng.random(shape) < 0.3
    labelled = given | (rng.random(shape) < 0.3)  # the given set on a coarser grid covers more voxels
    torch_logits = torch.from_numpy(logits)

    # given-geometry (an option): the given voxels keep their geometry and get the best non-free classes
    labels = pseudo_labels(torch_logits, given=given, labelled=labelled, free_index=17, mode="top2", form="given-geometry")
    ref_semantics, ref_labels, ref_logits = reference_pseudo_labels(logits, given, 17, with_free=False)
    np.testing.assert_array_equal(labels.semantics, ref_semantics)
    np.testing.assert_array_equal(labels.top2_labels, ref_labels)
    np.testing.assert_array_equal(labels.top2_logits, ref_logits)
    assert labels.top2_logits.dtype == np.float16 and labels.top2_support is None
    assert np.array_equal(labels.occupancy, given)

    # the paper's form (App. D, the default): free is a candidate, so the geometry is the model's
    labels = pseudo_labels(torch_logits, given=given, labelled=labelled, free_index=17, mode="top2")
    ref_semantics, ref_labels, ref_logits = reference_pseudo_labels(logits, labelled, 17, with_free=True)
    np.testing.assert_array_equal(labels.semantics, ref_semantics)
    np.testing.assert_array_equal(labels.top2_labels, ref_labels)
    np.testing.assert_array_equal(labels.top2_logits, ref_logits)
    np.testing.assert_array_equal(labels.top2_support, labelled)
    assert np.array_equal(labels.occupancy, labels.semantics != 17)
    assert not np.array_equal(labels.occupancy, given)  # free won some given voxels, others won outside it
    assert (labels.top2_labels == 17).any(axis=1).sum() > 0  # free kept as one of the two
    top1 = pseudo_labels(torch_logits, given=given, labelled=labelled, free_index=17, mode="top1")
    np.testing.assert_array_equal(top1.semantics, ref_semantics)
    assert top1.top2_labels is None and top1.top2_logits is None and top1.top2_support is None


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory):
    """A binary-only data file (occupancy, masks, embedded camera images; no semantics)."""
    root = tmp_path_factory.mktemp("autolabel")
    rng = np.random.default_rng(5)
    scenes = {"s0": make_frames(rng, "s0", 2, semantics=False), "s1": make_frames(rng, "s1", 1, semantics=False)}
    return write_file(root / "binary.h5", scenes), scenes


def label_file(path, data_path, mode, tta=False, model=None, form="paper"):
    dataset = open_inputs(data_path, OFFBOARD)
    model = model or StandInModel(OFFBOARD)
    return autolabel_to_file(model, dataset, path, model_config=OFFBOARD, taxonomy=OCC3D,
                             config=AutolabelConfig(mode=mode, form=form, tta=tta, batch_size=2))


def labelled_region(occupancy: np.ndarray) -> np.ndarray:
    """The given occupancy on the stand-in's binary grid (2 x 2 x 1 blocks), painted back on the file grid."""
    X, Y, Z = occupancy.shape
    coarse = occupancy.reshape(X // 2, 2, Y // 2, 2, Z).any(axis=(1, 3))
    return coarse.repeat(2, 0).repeat(2, 1)


def expected_logits(data_path, flips=((False, False),)):
    """The stand-in model's logits per frame, straight from predict_logits."""
    dataset = open_inputs(data_path, OFFBOARD)
    model = StandInModel(OFFBOARD)
    out = []
    for _, batch in iterate_batches(dataset, range(len(dataset)), 1):
        given = given_occupancy(batch["binary"], OFFBOARD.binary_shape)
        out.append(predict_logits(model, batch, SMALL, given_occupancy=given, flips=flips).semantic[0].numpy())
    return out


@pytest.mark.parametrize("form", ["paper", "given-geometry"])
@pytest.mark.parametrize("mode", ["top1", "top2"])
def test_pseudo_label_file_round_trip(tmp_path, binary_data, mode, form):
    data_path, scenes = binary_data
    report = label_file(tmp_path / f"{mode}.h5", data_path, mode, form=form)
    frames = [f for name in scenes for f in scenes[name]]
    labels = OccDataset(report.path)
    assert labels.taxonomy.name == "occ3d" and [s.name for s in labels.scenes] == ["s0", "s1"]
    assert report.frames == 3 and report.form == form
    paper = form == "paper"
    occupied, support_voxels = 0, 0
    for i, (truth, logits) in enumerate(zip(frames, expected_logits(data_path))):
        frame = labels.read(i, images=True)
        assert frame.token == truth.token
        np.testing.assert_array_equal(frame.mask_camera, truth.mask_camera)
        voxels = labelled_region(truth.occupancy) if paper else truth.occupancy
        semantics, top2_labels, top2_logits = reference_pseudo_labels(logits, voxels, 17, with_free=paper)
        np.testing.assert_array_equal(frame.semantics, semantics)
        np.testing.assert_array_equal(frame.occupancy, semantics != 17)
        if not paper:
            np.testing.assert_array_equal(frame.occupancy, truth.occupancy)
        if mode == "top2":
            np.testing.assert_array_equal(frame.top2_labels, top2_labels)
            np.testing.assert_array_equal(frame.top2_logits, top2_logits)
            if paper:
                np.testing.assert_array_equal(frame.top2_support, voxels)
            else:
                assert frame.top2_support is None
        else:
            assert frame.top2_labels is None and frame.top2_support is None
        assert frame.cameras[0].image_bytes == truth.cameras[0].image_bytes  # the file trains on its own
        occupied += int(frame.occupancy.sum())
        support_voxels += int(voxels.sum())
    assert report.occupied_voxels == occupied
    sizes = report.bytes_per_frame
    assert sizes["labels_raw"] == pytest.approx(occupied / 3, abs=0.1)
    assert sizes["top2_raw"] == (pytest.approx(6 * support_voxels / 3, abs=0.1) if mode == "top2" else 0)
    assert 0 < sizes["labels"] and sizes["file"] > sizes["labels"] + sizes["top2"]


def test_tta_flips_back_before_averaging(tmp_path, binary_data):
    data_path, _ = binary_data
    plain = expected_logits(data_path)
    flipped = expected_logits(data_path, flips=ALL_FLIPS)
    for a, b in zip(plain, flipped):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the stand-in is flip-equivariant
    # a single flip without the flip back would move the occupancy-driven logits
    dataset = open_inputs(data_path, OFFBOARD)
    _, batch = next(iterate_batches(dataset, [0], 1))
    given = given_occupancy(batch["binary"], OFFBOARD.binary_shape)
    raw = StandInModel(OFFBOARD)(images=batch["images"], img_from_cam=None, ego_from_cam=None, given_occupancy=given.flip(1))
    assert not np.allclose(raw.semantic_logits[0].detach().numpy(), plain[0], atol=1e-3)
    report = label_file(tmp_path / "tta.h5", data_path, "top2", tta=True)
    untouched = label_file(tmp_path / "no-tta.h5", data_path, "top2")
    a, b = OccDataset(report.path), OccDataset(untouched.path)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.read(i).semantics, b.read(i).semantics)


def test_online_model_is_refused(tmp_path, binary_data):
    data_path, _ = binary_data
    online = StandInConfig(offboard=False)
    with pytest.raises(AutolabelError, match="offboard"):
        autolabel_to_file(StandInModel(online), open_inputs(data_path, online), tmp_path / "x.h5",
                          model_config=online, taxonomy=OCC3D)
    assert not (tmp_path / "x.h5").exists()


def test_model_taxonomy():
    assert model_taxonomy(StandInConfig(), {}, None).name == "occ3d"
    assert model_taxonomy(StandInConfig(num_classes=17, free_index=16), {}, None).name == "openscene"
    with pytest.raises(AutolabelError, match="pass --taxonomy"):
        model_taxonomy(StandInConfig(num_classes=5, free_index=4), {}, None)
    with pytest.raises(AutolabelError, match="has 17 labels"):
        model_taxonomy(StandInConfig(), {}, "openscene")


def test_top2_soft_targets_train(tmp_path, binary_data):
    """Top2 pseudo-labels go through the training data path and the training loss, and a model learns them."""
    from b2s_core.data.dataset import DataConfig, OccTrainDataset, collate
    from b2s_core.train.objectives import semantic_loss

    data_path, _ = binary_data
    report = label_file(tmp_path / "soft.h5", data_path, "top2")
    dataset = OccTrainDataset([report.path], DataConfig(image_hw=(32, 48), augment=False, need_semantics=True))
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["top2_labels"].shape == (3, *SMALL.shape, 2)
    probs = batch["top2_probs"]
    occupied = batch["binary"] == 1
    assert torch.all(probs[occupied][:, 0] >= probs[occupied][:, 1])  # best class first
    # paper form: the pairs cover the whole labelled region, free among the candidates
    support = torch.from_numpy(np.stack([dataset.occ.read(i, fields=("top2",)).top2_support for i in range(3)]))
    assert torch.all(probs[~support][:, 0] == 1) and torch.all(batch["top2_labels"][~support] == 17)
    assert (probs[support][:, 1] > 0).all() and torch.all(support[occupied])  # occupied voxels lie in the support
    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.01 * torch.randn(3, 18, *SMALL.shape))
    optimiser = torch.optim.Adam([logits], lr=0.1)
    losses = []
    for _ in range(30):
        loss = semantic_loss(logits, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    learned = logits.detach().argmax(dim=1)  # (3, X, Y, Z)
    agree = (learned[occupied] == batch["top2_labels"][..., 0].long()[occupied]).float().mean()
    assert agree > 0.95


class CountingModel(StandInModel):
    """The stand-in that counts frames and can fail after a number of them (an interrupted job)."""

    def __init__(self, config, fail_after: int | None = None):
        super().__init__(config)
        self.frames, self.fail_after = 0, fail_after

    def forward(self, **inputs):
        if self.fail_after is not None and self.frames >= self.fail_after:
            raise RuntimeError("killed")
        self.frames += inputs["images"].shape[0]
        return super().forward(**inputs)


def test_interrupted_run_resumes(tmp_path, binary_data):
    data_path, _ = binary_data
    out = tmp_path / "resumed.h5"
    dataset = open_inputs(data_path, OFFBOARD)
    one_at_a_time = AutolabelConfig(mode="top2", batch_size=1)
    with pytest.raises(RuntimeError, match="killed"):  # dies in scene s1, after scene s0 (2 frames) is done
        autolabel_to_file(CountingModel(OFFBOARD, fail_after=2), dataset, out, model_config=OFFBOARD, taxonomy=OCC3D, config=one_at_a_time)
    assert not out.exists() and len(list(Path(str(out) + ".parts").glob("*.h5"))) == 1
    for other, named in ((AutolabelConfig(mode="top1"), "mode top2"),
                         (AutolabelConfig(mode="top2", form="given-geometry"), "form paper")):
        with pytest.raises(AutolabelError, match=f"earlier run with other settings \\({named}\\)"):
            autolabel_to_file(CountingModel(OFFBOARD), dataset, out, model_config=OFFBOARD, taxonomy=OCC3D,
                              config=other)
    with pytest.raises(AutolabelError, match="earlier run with other settings \\(labeller"):  # another model
        autolabel_to_file(CountingModel(OFFBOARD), dataset, out, model_config=OFFBOARD, taxonomy=OCC3D,
                          config=one_at_a_time, labeller="another checkpoint")
    model = CountingModel(OFFBOARD)
    report = autolabel_to_file(model, dataset, out, model_config=OFFBOARD, taxonomy=OCC3D, config=one_at_a_time)
    assert model.frames == 1  # only the unfinished scene ran again
    assert not Path(str(out) + ".parts").exists() and report.frames == 3
    full = label_file(tmp_path / "full.h5", data_path, "top2")
    a, b = OccDataset(report.path), OccDataset(full.path)
    assert [s.name for s in a.scenes] == ["s0", "s1"]
    for i in range(3):
        x, y = a.read(i, fields=("semantics", "top2")), b.read(i, fields=("semantics", "top2"))
        assert x.token == y.token
        np.testing.assert_array_equal(x.semantics, y.semantics)
        np.testing.assert_array_equal(x.top2_logits, y.top2_logits)
    assert report.occupied_voxels == full.occupied_voxels
