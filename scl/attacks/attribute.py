"""Private-attribute inference: can an attacker read a property the task does not need.

Each image carries a private attribute (e.g. who wrote the digit, the background, the
position) besides its task label. The attacker trains a small classifier on obfuscated
images of its split to predict the attribute and is scored on obfuscated test images. The
accuracy is reported beside three references computed by the same classifier and budget:

- ``attribute_chance``: frequency of the majority attribute in the test split;
- ``attribute_label_floor``: the classifier given only the one-hot class label, i.e. what the
  class alone (which class-conditional noise reveals by design) tells about the attribute;
- ``attribute_clean``: the classifier trained and tested on clean images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.attacks._common import (
    Obfuscate,
    Split,
    as_feature_map,
    check_images,
    check_positive_float,
    check_positive_int,
    fit,
    holdout,
    one_hot_maps,
    predict,
    resolve_device,
    seeded,
    unpack_split,
)
from scl.attacks.budget import AttackBudget, get_budget
from scl.errors import ShapeError
from scl.metrics import ATTRIBUTE_ACCURACY, ATTRIBUTE_CHANCE, ATTRIBUTE_CLEAN, ATTRIBUTE_LABEL_FLOOR
from scl.selection import check_labels

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["AttributeClassifier", "attribute_attack"]


class AttributeClassifier(nn.Module):
    """The fixed attribute classifier; accepts any channel count and spatial size.

    ``BatchNorm2d(in)`` -> 3 x 3 conv ``in -> 32`` -> ReLU -> 3 x 3 conv ``32 -> 32`` -> ReLU ->
    ``AdaptiveAvgPool2d(4)`` (any input size, even 1 x 1) -> linear ``512 -> 64`` -> ReLU ->
    linear ``64 -> num_attributes``.

    Shape:
        ``Tensor[N, C', H', W'] -> Tensor[N, num_attributes]`` logits.
    """

    def __init__(self, in_channels: int, num_attributes: int) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        check_positive_int(num_attributes, "num_attributes", minimum=2)
        self.in_channels = in_channels
        self.num_attributes = num_attributes
        self.features = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_attributes),
        )

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() != 4 or h.shape[1] != self.in_channels:
            raise ShapeError(
                f"AttributeClassifier expects Tensor[N, {self.in_channels}, H', W'], but got "
                f"shape {tuple(h.shape)}"
            )
        return self.head(self.features(h))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, num_attributes={self.num_attributes}"


def _split(
    split: Split, name: str, num_classes: int, num_attributes: int
) -> tuple[Tensor, Tensor, Tensor]:
    x, y, a = unpack_split(split, name, need_attribute=True)
    x = check_images(x, f"{name}.x")
    y = check_labels(y, num_classes, x.shape[0], name=f"{name}.y")
    a = check_labels(a, num_attributes, x.shape[0], name=f"{name}.attribute")
    return x, y, a


def _accuracy(
    features: Obfuscate,
    train: tuple[Tensor, Tensor, Tensor],
    test: tuple[Tensor, Tensor, Tensor],
    *,
    num_attributes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: Progress | None,
    description: str,
    validation_fraction: float | None = None,
) -> float:
    """Train an :class:`AttributeClassifier` on ``features(x, y)`` and return test accuracy.

    With ``validation_fraction``, that part of the attacker split is held out and training is
    early-stopped on it (patience of a quarter of ``epochs``, at least 3).
    """
    xa, ya, aa = train
    xt, yt, at = test
    generator = torch.Generator().manual_seed(seed)
    if validation_fraction is None:
        train_index, validation = torch.arange(xa.shape[0]), None
    else:
        train_index, validation = holdout(xa.shape[0], validation_fraction, generator)
    with seeded(seed, device):

        @torch.no_grad()
        def inputs(x: Tensor, y: Tensor) -> Tensor:
            return as_feature_map(features(x, y), x.shape[0]).to(device)

        probe = inputs(xa[:2].to(device), ya[:2].to(device))
        model = AttributeClassifier(probe.shape[1], num_attributes).to(device)

        def make_batch(index: Tensor) -> tuple[Tensor, Tensor]:
            return inputs(xa[index].to(device), ya[index].to(device)), aa[index].to(device)

        fit(model, make_batch, train_index, loss_fn=F.cross_entropy, epochs=epochs,
            batch_size=batch_size, lr=lr, generator=generator, progress=progress,
            description=description, validation=validation, patience=max(3, epochs // 4))
        xt_d, yt_d = xt.to(device), yt.to(device)
        logits = predict(model, lambda i: inputs(xt_d[i], yt_d[i]), xt.shape[0], 4 * batch_size)
    return float((logits.argmax(dim=1).cpu() == at.cpu()).double().mean())


def attribute_attack(
    obfuscate: Obfuscate,
    attacker: Split,
    test: Split,
    *,
    num_attributes: int,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    budget: str | AttackBudget | None = None,
    references: bool = True,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Infer a private attribute from obfuscated images.

    Trains an :class:`AttributeClassifier` (Adam, cross-entropy) on ``obfuscate(x, y)`` of the
    attacker split, calling ``obfuscate`` (under ``torch.no_grad()``) for every batch of every
    epoch so each epoch sees fresh noise, and scores it on obfuscated test images.

    Args:
        obfuscate: ``h = obfuscate(x, y)``, as for
            :func:`~scl.attacks.decoder.decoder_attack`; ``h`` may have any channel count and
            spatial size (``Tensor[B, ...]`` that is not 4-D is read as ``Tensor[B, F, 1, 1]``).
        attacker: ``(x, y, attribute)`` or an object with ``.x``, ``.y``, ``.attribute``:
            ``x`` ``Tensor[N, C, H, W]`` in [0, 1], ``y`` ``Tensor[N]`` class labels,
            ``attribute`` ``Tensor[N]`` in ``[0, num_attributes)``.
        test: the evaluation split, same form and image shape, disjoint from ``attacker``.
        num_attributes: number of attribute values (>= 2).
        num_classes: number of classes; default ``max(y) + 1`` over both splits.
        epochs: passes over the attacker split.
        batch_size: training batch size (>= 2).
        lr: Adam learning rate.
        budget: ``"quick"``, ``"standard"`` or ``"strong"`` (:mod:`scl.attacks.budget`): the
            budget's ``attribute_epochs`` at most, early-stopped on a validation part of the
            attacker split (``epochs`` is then ignored). ``None``: ``epochs`` on the whole split.
        references: also train the label-only and clean classifiers (``False``: only
            ``attribute_accuracy`` and ``attribute_chance``, e.g. for a second release of the
            same data, whose references are the same).
        seed: seeds initialisation, shuffling and anything the obfuscator draws from torch's
            global RNG; the caller's global RNG state is restored afterwards.
        device: where the classifier runs and where batches are sent before ``obfuscate`` is
            called; default: the device of the attacker's ``x``.
        progress: an optional ``rich.progress.Progress``; one task (total = epochs) is added
            per classifier trained (three).

    Returns:
        ``{"attribute_accuracy", "attribute_chance", "attribute_label_floor",
        "attribute_clean"}``, fractions in [0, 1] on the test split: accuracy from obfuscated
        images; the majority-attribute frequency; accuracy from the one-hot label alone (as
        ``num_classes`` constant maps at the image size); accuracy from clean images.

    Raises:
        ShapeError, LabelError, DataError, ConfigError: on invalid splits, outputs or options.

    """
    check_positive_int(num_attributes, "num_attributes", minimum=2)
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size", minimum=2)
    check_positive_float(lr, "lr")
    if num_classes is None:
        num_classes = _infer_num_classes(attacker, test)
    check_positive_int(num_classes, "num_classes")
    train = _split(attacker, "attacker", num_classes, num_attributes)
    evaluation = _split(test, "test", num_classes, num_attributes)
    if train[0].shape[0] < 2:
        raise ShapeError(f"attacker must hold at least 2 images, but got {train[0].shape[0]}")
    if train[0].shape[1:] != evaluation[0].shape[1:]:
        raise ShapeError(
            f"attacker and test images must have the same [C, H, W], but got "
            f"{tuple(train[0].shape[1:])} and {tuple(evaluation[0].shape[1:])}"
        )
    fraction = None
    if budget is not None:
        chosen = get_budget(budget)
        epochs, fraction = chosen.attribute_epochs, chosen.validation_fraction
    dev = resolve_device(device, train[0])
    size = (train[0].shape[2], train[0].shape[3])
    classes = num_classes

    def labels_only(x: Tensor, y: Tensor) -> Tensor:
        return one_hot_maps(y, classes, size).to(x.device)

    def accuracy(features: Obfuscate, description: str) -> float:
        return _accuracy(features, train, evaluation, num_attributes=num_attributes,
                         epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                         progress=progress, description=description, validation_fraction=fraction)

    counts = torch.bincount(evaluation[2].cpu(), minlength=num_attributes)
    result = {
        ATTRIBUTE_ACCURACY: accuracy(obfuscate, "attribute attack"),
        ATTRIBUTE_CHANCE: float(counts.max()) / float(evaluation[2].shape[0]),
    }
    if references:
        result[ATTRIBUTE_LABEL_FLOOR] = accuracy(labels_only, "attribute label floor")
        result[ATTRIBUTE_CLEAN] = accuracy(_identity, "attribute clean")
    return result


def _infer_num_classes(attacker: Split, test: Split) -> int:
    """``max(y) + 1`` over both splits (labels validated later against it)."""
    largest = 0
    for name, split in (("attacker", attacker), ("test", test)):
        y = unpack_split(split, name).y
        if isinstance(y, Tensor) and y.numel() and not y.is_floating_point():
            largest = max(largest, int(y.max()))
    return largest + 1


def _identity(x: Tensor, y: Tensor) -> Tensor:
    return x
