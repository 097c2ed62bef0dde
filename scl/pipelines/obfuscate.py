"""``scl obfuscate``: label-free obfuscation of a user's images with a trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scl.data import load_images
from scl.errors import ConfigError
from scl.io import atomic_write
from scl.runs import load_label_free, recorded_shape


def obfuscate_files(run: Path, source: Path, out: Path, *, selection: str | None = None) -> int:
    """Obfuscate every image of ``source``; write PNGs into a folder or one ``.npz``.

    ``selection``: ``"soft"`` or ``"gated"``; ``None``: the gated one when the run has it (the
    headline label-free release), else soft.

    Noise comes from the process's cipher stream (AES-256-CTR keyed from ``os.urandom``, never
    from a seed; :func:`scl.random.describe`): this is what leaves the data owner.
    """
    obfuscator, _ = load_label_free(Path(run), selection)
    if obfuscator.selection is None:
        raise ConfigError(f"{str(run)!r}: the obfuscator has no trained selection; run stage 2 first")
    shape = _input_shape(Path(run))
    x, names = load_images(source, channels=shape[0], size=(shape[1], shape[2]))
    with torch.no_grad():
        h = torch.cat([obfuscator(x[i : i + 256]) for i in range(0, x.shape[0], 256)])
    out = Path(out)
    if out.suffix.lower() == ".npz":
        with atomic_write(out, "wb") as handle:
            np.savez_compressed(handle, h=h.numpy().astype(np.float32), names=np.array(names))
    else:
        from PIL import Image

        out.mkdir(parents=True, exist_ok=True)
        images = (h.clamp(0, 1) * 255).round().to(torch.uint8)
        for name, image in zip(names, images, strict=False):
            array = image.permute(1, 2, 0).numpy()
            pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
            with atomic_write(out / f"{name}.png", "wb") as handle:
                pil.save(handle, format="PNG")
    return int(h.shape[0])


def _input_shape(run: Path) -> tuple[int, int, int]:
    """The ``(C, H, W)`` the run's obfuscator was trained on (recorded in metrics.json)."""
    shape = recorded_shape(run)
    if shape is None or len(shape) != 3:
        raise ConfigError(
            f"{str(run)!r}: metrics.json does not record the input shape the obfuscator was "
            "trained on; run `scl evaluate` on it to record it"
        )
    return shape[0], shape[1], shape[2]
