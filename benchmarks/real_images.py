"""A small real-image data set that scl was not developed on, built from pictures shipped with
matplotlib (no download): `python -m benchmarks.real_images OUT.npz [--size 24] [--per-class 400]`.

Three classes, one per picture: a portrait (``grace_hopper.jpg``), an MRI slice (``s1045.ima.gz``,
16-bit) and a drawing (``Minduka_Present_Blue_Pack.png``), each turned grey and scaled to [0, 1];
``--per-class`` patches of ``--size`` x ``--size`` pixels at seeded random positions. Written as an
``.npz`` with ``x`` (float32, ``[N, 1, size, size]``) and ``y`` (int64), which ``scl demo --data``
reads. The README's "real photographs" figures were measured on the default (1,200 images).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

PICTURES = ("grace_hopper.jpg", "s1045.ima.gz", "Minduka_Present_Blue_Pack.png")


def picture(name: str) -> np.ndarray:
    """One of matplotlib's sample pictures as a grey float32 array in [0, 1]."""
    from matplotlib import cbook
    from matplotlib import image as mpimg

    path = cbook.get_sample_data(name, asfileobj=False)
    if name.endswith(".ima.gz"):  # raw big-endian 16-bit, 256 x 256
        with gzip.open(path) as file:
            grey = np.frombuffer(file.read(), dtype=">u2").reshape(256, 256).astype(np.float32)
    else:
        grey = mpimg.imread(path).astype(np.float32)
        if grey.ndim == 3:
            grey = grey[..., :3].mean(-1)
    return grey / grey.max() if grey.max() > 1 else grey


def build(size: int = 24, per_class: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``per_class`` random ``size`` x ``size`` patches of each picture."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, name in enumerate(PICTURES):
        grey = picture(name)
        height, width = grey.shape
        for _ in range(per_class):
            i, j = rng.integers(0, height - size), rng.integers(0, width - size)
            xs.append(grey[i:i + size, j:j + size])
            ys.append(label)
    return np.stack(xs)[:, None].astype(np.float32), np.asarray(ys, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y = build(args.size, args.per_class, args.seed)
    np.savez(args.out, x=x, y=y)
    print(f"wrote {args.out}: {x.shape[0]} images {tuple(x.shape[1:])}, classes {np.bincount(y).tolist()}")


if __name__ == "__main__":
    main()
