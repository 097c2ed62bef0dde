"""Tests of scl.data: embedded digits, Dataset, split, user folders and .npz files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from scl.data import DEFAULT_FRACTIONS, Dataset, load_digits, load_user_data, split
from scl.data.digits import TINT_COLOURS
from scl.errors import ConfigError, DataError, SCLError

# --------------------------------------------------------------------------- helpers


def make_dataset(n: int = 1000, num_classes: int = 5, seed: int = 0) -> Dataset:
    """A synthetic data set whose pixel (0, 0) encodes the sample index."""
    rng = np.random.default_rng(seed)
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32) / (n - 1)
    y = torch.from_numpy(rng.integers(0, num_classes, size=n).astype(np.int64))
    return Dataset(
        x=x,
        y=y,
        attribute=None,
        num_classes=num_classes,
        class_names=[f"c{i}" for i in range(num_classes)],
        attribute_names=None,
        name="synthetic",
    )


def original_indices(ds: Dataset, n: int) -> np.ndarray:
    return np.rint(ds.x[:, 0, 0, 0].numpy().astype(np.float64) * (n - 1)).astype(np.int64)


def write_png(path: Path, size: tuple[int, int] = (6, 5), mode: str = "L", value: int = 128):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour: int | tuple[int, int, int] = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, colour).save(path)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Like torch.testing.assert_close for float32 (whose first call costs a second of imports)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    diff = float((actual - expected).abs().max()) if actual.numel() else 0.0
    assert diff <= 1e-5, f"max abs difference {diff}"


def chi_square(table: np.ndarray) -> float:
    """Pearson's chi-square statistic of a contingency table."""
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


# --------------------------------------------------------------------------- load_digits


def test_load_digits_shapes_dtypes_ranges() -> None:
    ds = load_digits()

    assert ds.name == "digits"
    assert ds.x.shape == (1797, 1, 16, 16) and ds.x.dtype == torch.float32
    assert ds.image_shape == (1, 16, 16) and ds.channels == 1 and len(ds) == 1797
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.y.shape == (1797,) and ds.y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    assert ds.class_counts().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert ds.attribute is None and ds.attribute_names is None and ds.num_attributes is None


def test_load_digits_size_8_is_raw_scaled_and_upsampling_is_bilinear() -> None:
    raw = load_digits(size=8)
    big = load_digits(size=32)

    assert raw.x.shape == (1797, 1, 8, 8)
    assert torch.equal(raw.x * 16, torch.round(raw.x * 16))  # integer counts 0..16
    expected = torch.nn.functional.interpolate(
        raw.x[:5], size=(32, 32), mode="bilinear", align_corners=False
    )
    assert_close(big.x[:5], expected)
    assert torch.equal(raw.y, big.y)


def test_load_digits_tinted() -> None:
    grey = load_digits(size=12)
    ds = load_digits(size=12, attribute=True, seed=0)

    assert ds.name == "digits-tinted"
    assert ds.x.shape == (1797, 3, 12, 12) and ds.x.dtype == torch.float32
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert ds.attribute is not None and ds.attribute.dtype == torch.int64
    assert ds.attribute_names == ["red", "green", "blue", "yellow"] and ds.num_attributes == 4
    assert torch.equal(ds.y, grey.y)
    palette = torch.tensor([TINT_COLOURS[n] for n in ds.attribute_names])
    expected = grey.x * palette[ds.attribute][:, :, None, None]
    assert_close(ds.x, expected)  # strokes coloured, background black


def test_tint_is_independent_of_class() -> None:
    ds = load_digits(size=8, attribute=True, seed=0)
    assert ds.attribute is not None
    table = np.zeros((10, 4))
    np.add.at(table, (ds.y.numpy(), ds.attribute.numpy()), 1)

    assert (table > 0).all()  # every colour appears in every class
    # chi-square test of independence, 27 degrees of freedom: 99.9% quantile is 55.48
    assert chi_square(table) < 55.48
    # marginal uniformity, 3 degrees of freedom: 99.9% quantile is 16.27
    counts = table.sum(0)
    assert float(((counts - 1797 / 4) ** 2 / (1797 / 4)).sum()) < 16.27


def test_tint_is_seeded() -> None:
    a = load_digits(size=8, attribute=True, seed=1)
    b = load_digits(size=8, attribute=True, seed=1)
    c = load_digits(size=8, attribute=True, seed=2)

    assert a.attribute is not None and b.attribute is not None and c.attribute is not None
    assert torch.equal(a.attribute, b.attribute) and torch.equal(a.x, b.x)
    assert not torch.equal(a.attribute, c.attribute)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "16"])
def test_load_digits_bad_size(size: object) -> None:
    with pytest.raises(ConfigError, match="size must be a positive int"):
        load_digits(size=size)  # type: ignore[arg-type]


def test_load_digits_bad_seed() -> None:
    with pytest.raises(ConfigError, match="seed must be a non-negative int, but got -1"):
        load_digits(attribute=True, seed=-1)


# --------------------------------------------------------------------------- Dataset


def test_subset_and_repr() -> None:
    ds = load_digits(size=8, attribute=True)

    assert ds.attribute is not None
    sub = ds.subset([5, 0, 5])
    assert len(sub) == 3 and torch.equal(sub.x[0], ds.x[5]) and torch.equal(sub.x[2], ds.x[5])
    assert sub.attribute is not None and int(sub.attribute[1]) == int(ds.attribute[0])
    assert sub.class_names == ds.class_names and sub.num_classes == 10
    assert len(ds.subset(torch.tensor([], dtype=torch.int64))) == 0
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    mask = ds.y == 3
    assert len(ds.subset(mask)) == 183
    assert "digits-tinted" in repr(ds) and "n=1797" in repr(ds)
    with pytest.raises(IndexError, match="index 1797 is out of range"):
        ds.subset([0, 1797])
    with pytest.raises(IndexError, match="boolean mask must have shape"):
        ds.subset(torch.ones(3, dtype=torch.bool))


def test_dataset_validates_fields() -> None:
    x = torch.zeros(4, 1, 2, 2)
    y = torch.tensor([0, 1, 0, 1])
    common: dict[str, Any] = {"num_classes": 2, "class_names": ["a", "b"], "name": "t"}
    with pytest.raises(DataError, match="y has 3 labels but x has 4 images"):
        Dataset(x=x, y=y[:3], attribute=None, attribute_names=None, **common)
    with pytest.raises(DataError, match=r"x must be a float32 Tensor\[N, C, H, W\]"):
        Dataset(x=x[:, 0], y=y, attribute=None, attribute_names=None, **common)
    with pytest.raises(DataError, match=r"labels must be in \[0, 2\)"):
        Dataset(x=x, y=y + 1, attribute=None, attribute_names=None, **common)
    with pytest.raises(DataError, match=r"attribute values must be in \[0, 1\)"):
        Dataset(x=x, y=y, attribute=y, attribute_names=["only"], **common)


# --------------------------------------------------------------------------- split


def test_split_default_is_disjoint_covering_stratified() -> None:
    n = 1000
    ds = make_dataset(n)
    parts = split(ds, seed=3)

    assert list(parts) == list(DEFAULT_FRACTIONS)
    seen = np.concatenate([original_indices(p, n) for p in parts.values()])
    assert len(seen) == n and len(np.unique(seen)) == n  # disjoint and covering
    class_sizes = ds.class_counts().numpy()
    for name, part in parts.items():
        f = DEFAULT_FRACTIONS[name]
        assert abs(len(part) - n * f) <= 1
        assert np.all(np.abs(part.class_counts().numpy() - class_sizes * f) <= 1)
        idx = original_indices(part, n)
        assert np.all(np.diff(idx) > 0)  # original order kept
        assert torch.equal(part.y, ds.y[torch.from_numpy(idx)])


def test_split_of_digits_keeps_attribute() -> None:
    ds = load_digits(size=8, attribute=True)
    parts = split(ds, fractions={"a": 0.5, "b": 0.5})

    assert sum(len(p) for p in parts.values()) == 1797
    for p in parts.values():
        assert p.attribute is not None and len(p.attribute) == len(p)
        assert p.attribute_names == ds.attribute_names


def test_split_is_deterministic() -> None:
    ds = make_dataset()
    a, b, c = split(ds, seed=7), split(ds, seed=7), split(ds, seed=8)

    for k in a:
        assert torch.equal(a[k].x, b[k].x)
    assert not all(torch.equal(a[k].x, c[k].x) for k in a)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"a": 0.5, "b": 0.6}, "fractions must sum to 1"),
        ({"a": 1.2, "b": -0.2}, "fraction 'b' must be positive, but got -0.2"),
        ({"a": 1.0, "b": 0.0}, "fraction 'b' must be positive, but got 0.0"),
        ({"a": float("nan"), "b": 0.5}, "fraction 'a' must be positive"),
        ({"a": "half", "b": 0.5}, "fraction 'a' must be a number"),
        ({}, "fractions must be a non-empty dict"),
    ],
)
def test_split_bad_fractions(fractions: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        split(make_dataset(), fractions=fractions)


def test_split_too_small() -> None:
    ds = make_dataset(n=3, num_classes=1)
    with pytest.raises(DataError, match=r"leaves part\(s\) \['b'\] empty"):
        split(ds, fractions={"a": 0.9, "b": 0.1})


# --------------------------------------------------------------------------- image folders


def test_folder_greyscale(tmp_path: Path) -> None:
    write_png(tmp_path / "zebra" / "1.png", value=255)
    write_png(tmp_path / "ant" / "b.PNG", value=0)
    write_png(tmp_path / "ant" / "a.png", value=51)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"ignored")

    ds = load_user_data(tmp_path)

    assert ds.class_names == ["ant", "zebra"] and ds.num_classes == 2
    assert ds.x.shape == (3, 1, 5, 6) and ds.x.dtype == torch.float32
    assert ds.y.tolist() == [0, 0, 1]
    assert_close(ds.x[:, 0, 0, 0], torch.tensor([0.2, 0.0, 1.0]))
    assert ds.attribute is None and ds.name == tmp_path.name


def test_folder_mixed_modes_become_rgb(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "grey.png", value=100)
    write_png(tmp_path / "b" / "colour.png", mode="RGB", value=200)
    Image.new("RGB", (6, 5), (10, 20, 30)).save(tmp_path / "b" / "photo.JPG", quality=100)

    ds = load_user_data(str(tmp_path))

    assert ds.x.shape == (3, 3, 5, 6)
    assert_close(ds.x[0, :, 0, 0], torch.full((3,), 100 / 255))
    assert_close(ds.x[1, :, 0, 0], torch.tensor([200, 0, 55]) / 255)


def test_folder_unreadable_image(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "ok.png")
    bad = tmp_path / "b" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00garbage, not a png at all")
    with pytest.raises(DataError, match=r"broken\.png: cannot read this image"):
        load_user_data(tmp_path)


def test_folder_odd_image_size(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "1.png", size=(6, 5))
    write_png(tmp_path / "b" / "2.png", size=(7, 5))
    with pytest.raises(
        DataError, match=r"2\.png: image is 7x5 pixels .* but .*1\.png is 6x5; all images must"
    ):
        load_user_data(tmp_path)


def test_folder_without_classes(tmp_path: Path) -> None:
    write_png(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class sub-folders found"):
        load_user_data(tmp_path)
    write_png(tmp_path / "only" / "1.png")
    with pytest.raises(DataError, match="found one class folder .'only'. but a classifier needs"):
        load_user_data(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        load_user_data(tmp_path)


# --------------------------------------------------------------------------- .npz files


@pytest.mark.parametrize("layout", ["NHW", "N1HW", "N3HW"])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("with_attribute", [False, True])
def test_npz_round_trip(tmp_path: Path, layout: str, dtype: str, with_attribute: bool) -> None:
    rng = np.random.default_rng(0)
    shape = {"NHW": (6, 4, 5), "N1HW": (6, 1, 4, 5), "N3HW": (6, 3, 4, 5)}[layout]
    pixels = rng.integers(0, 256, size=shape).astype(np.uint8)
    x = pixels if dtype == "uint8" else (pixels / 255).astype(dtype)
    y = np.array([0, 1, 2, 0, 1, 3])
    extra: dict[str, Any] = (
        {"attribute": np.array([1, 0, 1, 0, 1, 0], np.int32)} if with_attribute else {}
    )
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, **extra)

    ds = load_user_data(path)

    channels = 3 if layout == "N3HW" else 1
    assert ds.x.shape == (6, channels, 4, 5) and ds.x.dtype == torch.float32
    assert_close(ds.x, torch.from_numpy(pixels.reshape(6, channels, 4, 5) / 255).float())
    assert ds.y.tolist() == y.tolist() and ds.y.dtype == torch.int64
    assert ds.num_classes == 4 and ds.class_names == ["0", "1", "2", "3"]
    assert ds.name == "mine"
    if with_attribute:
        assert ds.attribute is not None and ds.attribute.tolist() == [1, 0, 1, 0, 1, 0]
        assert ds.attribute.dtype == torch.int64 and ds.attribute_names == ["0", "1"]
    else:
        assert ds.attribute is None and ds.attribute_names is None


def test_npz_names_and_whole_float_labels(tmp_path: Path) -> None:
    path = tmp_path / "named.npz"
    np.savez_compressed(
        path,
        x=np.zeros((3, 2, 2), np.float32),
        y=np.array([0.0, 1.0, 1.0]),
        class_names=np.array(["cat", "dog"]),
        attribute=np.array([0, 1, 2]),
        attribute_names=np.array(["young", "adult", "old"]),
    )
    ds = load_user_data(path)

    assert ds.class_names == ["cat", "dog"] and ds.y.tolist() == [0, 1, 1]
    assert ds.attribute_names == ["young", "adult", "old"]


def save(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


X = np.zeros((4, 3, 3), np.uint8)
Y = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"x": X, "labels": Y},
            r"data\.npz: missing key\(s\) \['y'\]; found \['labels', 'x'\]",
        ),
        ({"images": X}, r"missing key\(s\) \['x', 'y'\]; found \['images'\]"),
        (
            {"x": X, "y": np.array([0, 1, 0, 1, 1])},
            "'y' has 5 labels but 'x' has 4 images; they must have the same length",
        ),
        ({"x": X, "y": np.zeros(4, int)}, r"'y' has only one class \(\[0\]\)"),
        (
            {"x": X, "y": np.array([0, 1.5, 0, 1])},
            "'y' must hold integer labels, but got 1.5 at index 1",
        ),
        ({"x": X, "y": np.array([0, np.nan, 0, 1])}, "'y' contains 1 NaN/infinite value"),
        ({"x": X, "y": np.array([0, -1, 0, 1])}, "'y' must be non-negative, but got -1 at index 1"),
        ({"x": X, "y": np.array(["a", "b", "a", "b"])}, "'y' must hold integer labels"),
        ({"x": X, "y": Y.reshape(2, 2)}, r"'y' must be a vector of N labels, but has shape"),
        (
            {"x": np.full((4, 3, 3), 1.5), "y": Y},
            r"float 'x' values must be in \[0, 1\], but found min 1\.5 and max 1\.5",
        ),
        (
            {"x": np.linspace(-0.5, 255, 36).reshape(4, 3, 3), "y": Y},
            "found min -0.5 and max 255",
        ),
        (
            {"x": np.where(np.eye(3, dtype=bool), np.nan, 0.5)[None].repeat(4, 0), "y": Y},
            r"'x' contains 12 NaN/infinite value\(s\) \(first in image 0\)",
        ),
        ({"x": np.zeros((4, 9)), "y": Y}, r"'x' must be N x H x W or N x C x H x W .* shape"),
        ({"x": np.zeros((4, 5, 5, 3)), "y": Y}, "looks channels-last"),
        ({"x": np.zeros((4, 2, 3, 5)), "y": Y}, "'x' has 2 channels"),
        ({"x": X.astype(np.int64), "y": Y}, "'x' must be uint8 .* but has dtype int64"),
        (
            {"x": X, "y": Y, "attribute": np.array([0, 1])},
            "'attribute' has 2 labels but 'x' has 4 images",
        ),
        (
            {"x": X, "y": Y, "class_names": np.array(["a", "b", "c"])},
            "'class_names' has 3 names but the labels need 2",
        ),
    ],
)
def test_npz_bad_data(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = save(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_user_data(path)
    assert "\n" not in str(info.value)  # one line for the command line
    assert isinstance(info.value, SCLError) and isinstance(info.value, ValueError)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.target),))


def test_npz_with_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = save(tmp_path, x=np.array([_Evil(marker)] * 4, dtype=object), y=Y)
    with pytest.raises(DataError, match="'x' is an object array .stored with pickle., which scl"):
        load_user_data(path)
    assert not marker.exists()


def test_pickle_file_named_npz_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data.npz"
    path.write_bytes(pickle.dumps({"x": _Evil(marker), "y": Y}))
    with pytest.raises(DataError, match=r"data\.npz: not an \.npz archive"):
        load_user_data(path)
    assert not marker.exists()


def test_garbage_and_npy_named_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match=r"data\.npz: (cannot read this \.npz|not an \.npz)"):
        load_user_data(path)
    with open(path, "wb") as fh:
        np.save(fh, X)
    with pytest.raises(DataError, match=r"is a single \.npy array, not an \.npz archive"):
        load_user_data(path)


def test_missing_path_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.npz: no such file or directory"):
        load_user_data(tmp_path / "nope.npz")
    csv = tmp_path / "data.csv"
    csv.write_text("1,2\n")
    with pytest.raises(DataError, match=r"unsupported data file suffix '\.csv'"):
        load_user_data(csv)


def test_images_npz_without_x_says_so_once(tmp_path):
    from scl.data.user import load_images

    path = tmp_path / "digits.npz"
    np.savez(path, images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError) as info:
        load_images(path, channels=1, size=(8, 8))
    message = str(info.value)
    assert "missing key 'x' (found ['images'])" in message and "np.savez(path, x=images)" in message
    assert "cannot read" not in message  # not wrapped a second time
