"""Detection (spec §2.2): box selections, the detector's decoding, COCO mAP, scenes, user data, CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import scl
from scl.cli import app
from scl.data.scenes import DetectionData, load_detection_data, make_scenes, split_detection
from scl.errors import DataError
from scl.metrics import DECODER_PSNR, DECODER_SSIM, ceiling_of, floor_of, release_key
from scl.models import CenterNet
from scl.models.detector import decode, encode_targets
from scl.obfuscator import Obfuscator
from scl.pipelines import detection
from scl.pipelines.coco import coco_map
from scl.selection import HardSelection

torch.set_num_threads(1)
runner = CliRunner()


def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


# -- hard selection from boxes ---------------------------------------------------------------------
def test_box_masks_with_background_class_cover_every_pixel_once_outside_overlaps():
    hard = HardSelection(3, background=2)  # two object classes + background
    targets = [_target([[0, 0, 4, 4], [2, 2, 6, 6]], [0, 1]), _target([], [])]
    masks = hard.from_boxes(targets, (8, 8), (8, 8))
    assert masks.shape == (2, 3, 1, 8, 8)
    m = masks[0, :, 0]
    assert m[0, 0:4, 0:4].eq(1).all() and m[1, 2:6, 2:6].eq(1).all()
    assert m[0, 2:4, 2:4].eq(1).all() and m[1, 2:4, 2:4].eq(1).all()  # overlap: both classes
    inside = (m[0] + m[1]) > 0
    assert torch.equal(m[2], (~inside).float())  # background exactly outside every box
    assert masks[1, 2].eq(1).all() and masks[1, :2].eq(0).all()  # an image without objects


def test_box_masks_pass_through_option_and_coarser_resolution():
    targets = [_target([[1, 1, 3, 3]], [0])]
    masks = HardSelection(2).from_boxes(targets, (4, 4), (8, 8))  # no background class
    assert masks.shape == (1, 2, 1, 4, 4)
    # box [1, 3) at half resolution is [0.5, 1.5): it overlaps cells 0 and 1
    expected = torch.zeros(4, 4)
    expected[0:2, 0:2] = 1
    assert torch.equal(masks[0, 0, 0], expected)
    assert masks[0, 1].eq(0).all()  # pixels outside every box go through no class


def test_obfuscator_with_boxes_uses_the_box_masks():
    layer = scl.StochasticConditionalConv2d(1, 1, 3, 3, padding="same")
    obf = Obfuscator(layer, box_background=2).eval()
    x = torch.rand(2, 1, 8, 8)
    targets = [_target([[0, 0, 4, 4]], [1]), _target([[2, 2, 8, 8]], [0])]
    masks = HardSelection(3, background=2).from_boxes(targets, (8, 8), (8, 8))
    a = obf(x, boxes=targets, generator=torch.Generator().manual_seed(1))
    b = layer(x, masks, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.allclose(a, b)


# -- the detector ------------------------------------------------------------------------------------
def test_decode_finds_known_peaks_and_boxes():
    heat = torch.zeros(1, 2, 6, 6)
    size = torch.zeros(1, 2, 6, 6)
    offset = torch.zeros(1, 2, 6, 6)
    heat[0, 1, 2, 3] = 0.9  # class 1 at cell (y=2, x=3)
    heat[0, 1, 2, 4] = 0.5  # a neighbour, not a local maximum: suppressed
    heat[0, 0, 5, 0] = 0.4  # class 0 at (y=5, x=0)
    heat[0, 0, 0, 0] = 0.01  # below the threshold
    size[0, :, 2, 3] = torch.tensor([2.0, 1.0])
    offset[0, :, 2, 3] = torch.tensor([0.5, 0.5])
    size[0, :, 5, 0] = torch.tensor([1.0, 1.0])
    (out,) = decode(heat, size, offset, stride=4, threshold=0.05)
    assert out["labels"].tolist() == [1, 0]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.4]))
    # centre (3.5, 2.5) cells = (14, 10) px; 8 x 4 px -> (10, 8, 18, 12)
    assert torch.allclose(out["boxes"][0], torch.tensor([10.0, 8.0, 18.0, 12.0]))
    assert torch.allclose(out["boxes"][1], torch.tensor([0.0, 18.0, 2.0, 22.0]))  # clipped at x = 0


def test_encoded_targets_decode_back_to_the_boxes():
    target = _target([[4, 8, 20, 24], [25, 2, 37, 18]], [0, 2])
    enc = encode_targets([target], 3, (12, 12), 4)
    assert enc["heatmap"].max() == 1 and enc["mask"].sum() == 2
    (out,) = decode(enc["heatmap"], enc["size"], enc["offset"], stride=4, threshold=0.99)
    order = out["labels"].argsort()
    assert out["labels"][order].tolist() == [0, 2]
    assert torch.allclose(out["boxes"][order], target["boxes"], atol=1e-4)


def test_centernet_shapes_loss_and_checkpoint(tmp_path):
    net = CenterNet(1, 3, width=4)
    x = torch.rand(2, 1, 32, 32)
    out = net(x)
    assert out["heatmap"].shape == (2, 3, 8, 8) and out["size"].shape == (2, 2, 8, 8)
    loss, stats = net.loss(x, [_target([[2, 2, 10, 10]], [1]), _target([], [])])
    assert loss.isfinite() and {"heatmap_loss", "size_loss", "offset_loss"} <= set(stats)
    net.eval()
    scl.save(net, tmp_path / "n.safetensors")
    loaded = scl.load(tmp_path / "n.safetensors").eval()
    assert isinstance(loaded, CenterNet) and torch.allclose(loaded(x)["heatmap"], net(x)["heatmap"])
    with pytest.raises(scl.errors.ShapeError, match="multiples of 4"):
        net(torch.rand(1, 1, 30, 30))


# -- COCO mAP ---------------------------------------------------------------------------------------
def _dets(boxes, labels, scores):
    d = _target(boxes, labels)
    d["scores"] = torch.tensor(scores, dtype=torch.float32)
    return d


def test_coco_map_known_answers():
    gt = [_target([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    perfect = coco_map(gt, [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], [0.9, 0.8])],
                       num_classes=2, image_size=(48, 48))
    assert perfect == pytest.approx({"map": 1.0, "map50": 1.0, "map75": 1.0})
    # one of two objects found: precision 1 up to recall 0.5, i.e. 51 of COCO's 101 recall points
    half = coco_map(gt, [_dets([[0, 0, 10, 10]], [0], [0.9])], num_classes=2, image_size=(48, 48))
    assert half["map"] == pytest.approx(51 / 101) and half["map50"] == pytest.approx(51 / 101)
    wrong = coco_map(gt, [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0.9, 0.8])],
                     num_classes=2, image_size=(48, 48))
    assert wrong["map"] == 0.0 and wrong["map50"] == 0.0
    assert coco_map(gt, [_dets([], [], [])], num_classes=2, image_size=(48, 48))["map"] == 0.0
    # a box of IoU 0.6: counted at IoU .5, not at .75
    shifted = coco_map([_target([[0, 0, 10, 10]], [0])], [_dets([[0, 0, 10, 6]], [0], [0.9])],
                       num_classes=1, image_size=(48, 48))
    assert shifted["map50"] == pytest.approx(1.0) and shifted["map75"] == 0.0


# -- scenes -----------------------------------------------------------------------------------------
def test_scenes_are_seeded_and_well_formed():
    a, b, c = make_scenes(30, seed=3), make_scenes(30, seed=3), make_scenes(30, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert a.images.shape == (30, 1, 48, 48) and 0 <= a.images.min() and a.images.max() <= 1
    assert a.class_names == ["0", "1", "7"]
    for boxes, labels in zip(a.boxes, a.labels, strict=True):
        assert 1 <= len(boxes) <= 4 and len(labels) == len(boxes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert ((labels >= 0) & (labels < 3)).all()


def test_split_is_disjoint_and_covers_the_fractions():
    data = make_scenes(50, seed=1)
    parts = split_detection(data, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 20, "obfuscator": 10, "attacker": 10, "test": 10}
    seen = set()
    for part in parts.values():
        for image in part.images:
            key = image.numpy().tobytes()
            assert key not in seen
            seen.add(key)


# -- user data --------------------------------------------------------------------------------------
def _npz(path, **overrides):
    arrays = {
        "images": np.zeros((12, 32, 32), dtype=np.uint8),
        "boxes": np.array([[1, 1, 9, 9], [10, 10, 20, 30], [0, 0, 32, 32]], dtype=np.float32),
        "box_labels": np.array([0, 1, 1]),
        "box_image": np.array([0, 0, 5]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_user_npz_loads_and_groups_boxes(tmp_path):
    data = load_detection_data(_npz(tmp_path / "d.npz", class_names=np.array(["cat", "dog"])))
    assert isinstance(data, DetectionData) and data.images.shape == (12, 1, 32, 32)
    assert data.class_names == ["cat", "dog"] and data.num_objects == 3
    assert data.boxes[0].shape == (2, 4) and data.labels[5].tolist() == [1] and len(data.boxes[1]) == 0


@pytest.mark.parametrize(("overrides", "match"), [
    ({"boxes": None}, "missing array 'boxes'"),
    ({"boxes": np.array([[5, 5, 1, 9], [10, 10, 20, 30], [0, 0, 32, 32]], dtype=np.float32)}, "x1 > x0"),
    ({"boxes": np.array([[1, 1, 9, 9], [10, 10, 20, 40], [0, 0, 32, 32]], dtype=np.float32)}, "clip boxes"),
    ({"box_image": np.array([0, 0, 12])}, "must index the 12 images"),
    ({"box_labels": np.array([0, 1])}, "one per box"),
    ({"images": np.zeros((12, 30, 30), dtype=np.uint8), "boxes": np.array([[1, 1, 9, 9]] * 3, dtype=np.float32)},
     "multiples of 4"),
    ({"images": np.full((12, 32, 32), 2.0, dtype=np.float32)}, r"in \[0, 1\]"),
])
def test_user_npz_errors_say_what_to_do(tmp_path, overrides, match):
    with pytest.raises(DataError, match=match):
        load_detection_data(_npz(tmp_path / "bad.npz", **overrides))


def test_user_npz_with_pickled_arrays_is_refused(tmp_path):
    path = _npz(tmp_path / "p.npz", box_labels=np.array([0, 1, "x"], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        load_detection_data(path)


def test_user_coco_json_loads_resized_boxes(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 80), dtype=np.uint8)).save(tmp_path / name)
    spec = {
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
        "annotations": [{"image_id": 9, "category_id": 3, "bbox": [8, 4, 16, 20]}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(spec))
    data = load_detection_data(tmp_path / "coco.json", image_size=32)
    assert data.images.shape == (2, 1, 32, 32) and data.class_names == ["person", "car"]
    assert data.labels[1].tolist() == [1] and len(data.boxes[0]) == 0
    assert torch.allclose(data.boxes[1], torch.tensor([[3.2, 3.2, 9.6, 19.2]]))
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="'images', 'annotations' and 'categories'"):
        load_detection_data(tmp_path / "bad.json")


def test_detect_cli_reports_bad_data_in_one_red_line(tmp_path):
    result = runner.invoke(app, ["detect", "--quick", "--no-progress", "--out", str(tmp_path / "r"),
                                 "--data", str(tmp_path / "missing.npz")])
    assert result.exit_code == 2 and "no such file" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["detect", "--set", "image_size=30", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "multiple of 4" in result.output


# -- the command --------------------------------------------------------------------------------------
def html_text(out):
    return " ".join((out / "report.html").read_text().split())


def test_detect_quick_writes_the_run_folder(tmp_path):
    out = tmp_path / "det"
    tiny = ["num_images=120", "detector.epochs=1", "stage1.epochs=2", "stage2.epochs=1",
            "attacks.max_epochs=1", "attacks.averaged_copies=2"]
    args = ["detect", "--quick", "--no-progress", "--out", str(out), "--max-map-loss", "40"]
    for item in tiny:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("config.json", "metrics.json", "log.txt", "report.html"):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"detector.safetensors", "obfuscator.safetensors"}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"samples.png", "selection_maps.png", "hard_selection.png", "detections_clean.png",
            "detections_soft.png", "training_curves.png", "utility_budget.png"} <= figures
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["utility"]["max_map_loss"] == 40.0
    # the mAP budget: both stages that shape a release, recorded per epoch and said in the terminal
    assert set(metrics["utility"]) == {"stage1", "soft"}
    for record in metrics["utility"].values():
        assert record["measure"] == "mAP@.5" and record["max_map_loss"] == record["max_loss"] == 40.0
        assert len(record["multiplier"]) == len(record["validation_losses"]) >= 1
    assert metrics["utility"]["stage1"]["validation_images"] == 12  # half of the obfuscator split
    assert "budget 40 points of mAP@.5, hard release" in " ".join(result.output.split())
    assert "Utility budget" in (out / "report.html").read_text()
    assert metrics["privacy"]["budget"] == "quick"
    assert set(metrics["map"]) == set(metrics["map50"]) == {"clean", "hard", "soft"}
    assert all(0 <= v <= 1 for v in metrics["map50"].values())
    assert {DECODER_SSIM, floor_of(DECODER_SSIM), ceiling_of(DECODER_SSIM), DECODER_PSNR} <= set(metrics["privacy"])
    # plain noise at the hard release's mAP@.5, attacked by the same decoder, with a verdict in words
    privacy = metrics["privacy"]
    assert privacy["reference_release"] == "hard" and privacy["reference_map50"] == metrics["map50"]["hard"]
    assert privacy["gaussian_scale"] > 0 and 0 <= privacy["gaussian_map50"] <= 1
    assert {release_key(DECODER_SSIM, "gaussian"), release_key(DECODER_PSNR, "gaussian")} <= set(privacy)
    assert set(privacy["beats_gaussian"]["hard"]) == {DECODER_SSIM, DECODER_PSNR}
    verdict = "plain Gaussian noise at the same mAP@.5"
    assert verdict in " ".join(result.output.split()) and verdict in html_text(out)
    assert any(t["target"].startswith("< plain noise at the same mAP@.5") for t in metrics["targets"])
    assert metrics["dataset"] == "scenes" and metrics["num_classes"] == 3
    assert set(metrics["splits"]) == {"train", "obfuscator", "attacker", "test"} and min(metrics["splits"].values()) > 0
    assert {"base", "stage1", "stage2", "attacks"} <= set(metrics["seconds"])
    assert metrics["targets"][0]["name"].startswith("clean - soft mAP@.5")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    html = (out / "report.html").read_text()
    assert "Detection" in html and "figures/selection_maps.png" in html
    assert "mask-only floor" in result.output and "report.html" in result.output
    obf = scl.load(out / "checkpoints" / "obfuscator.safetensors")
    assert obf.num_classes == 4 and obf.hard.background == 3  # 3 classes + background


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(scl.errors.ConfigError, match="unknown config key"):
        detection.build_config(assignments=["stage3.epochs=1"])
    with pytest.raises(scl.errors.ConfigError, match="positive integer"):
        detection.build_config(assignments=["detector.epochs=0"])
