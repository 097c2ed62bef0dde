"""Privacy attacks on obfuscated data, each reported beside a label-only floor and a clean ceiling.

Every attack takes an obfuscation callable ``h = obfuscate(x, labels)`` (see :data:`Obfuscate`)
that returns a fresh noisy sample per call, so any obfuscator can be attacked, an identity one
included. Attacks call it under ``torch.no_grad()``.

- :func:`run_decoder_attacks` (:func:`decoder_attack`, :func:`label_floor_attack`,
  :func:`clean_ceiling_attack`): a learned decoder rebuilds ``x`` from ``h``; SSIM / PSNR.
- :func:`attribute_attack`: a classifier infers a private attribute from ``h``; accuracy.
- :func:`distance_correlation`, :func:`ssim`, :func:`psnr`: the yardsticks.
"""

from scl.attacks._common import Obfuscate, Split
from scl.attacks.attribute import AttributeClassifier, attribute_attack
from scl.attacks.decoder import (
    Decoder,
    DecoderAttackReport,
    DecoderAttackResult,
    clean_ceiling_attack,
    decoder_attack,
    label_floor_attack,
    run_decoder_attacks,
)
from scl.attacks.metrics import distance_correlation, psnr, ssim, ssim_kernel_size
from scl.attacks.reidentification import (
    EmbeddingMatcher,
    ReidentificationResult,
    nearest_neighbour_ranks,
    reidentification_attack,
    reidentification_floor,
    top_k,
)

__all__ = [
    "AttributeClassifier",
    "Decoder",
    "DecoderAttackReport",
    "DecoderAttackResult",
    "EmbeddingMatcher",
    "Obfuscate",
    "ReidentificationResult",
    "Split",
    "attribute_attack",
    "clean_ceiling_attack",
    "decoder_attack",
    "distance_correlation",
    "label_floor_attack",
    "nearest_neighbour_ranks",
    "psnr",
    "reidentification_attack",
    "reidentification_floor",
    "run_decoder_attacks",
    "ssim",
    "ssim_kernel_size",
    "top_k",
]
