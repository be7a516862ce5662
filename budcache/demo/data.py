"""The demo dataset: sklearn's ``load_digits`` (ships offline), upsampled to 16x16 in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Returns (images (N,1,16,16) in [-1,1], labels (N,), raw 8x8 features (N,64) in [0,16])."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = digits.data.astype(np.float32)
    small = torch.from_numpy(raw).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    images = F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    return images.clamp(-1, 1), torch.from_numpy(digits.target).long(), raw


def to_digit_features(images: torch.Tensor) -> np.ndarray:
    """(N,1,16,16) images in [-1,1] -> (N,64) features on the 8x8, 0..16 scale of ``load_digits``."""
    small = F.avg_pool2d(images.float().clamp(-1, 1), 2)
    return ((small + 1.0) * 8.0).reshape(images.shape[0], 64).numpy()


def digit_classifier():
    """An RBF SVC trained on the real 8x8 digits (labels generated samples via ``to_digit_features``)."""
    from sklearn.svm import SVC

    _, labels, raw = load_digits_16()
    return SVC(gamma=0.001, C=10).fit(raw, labels.numpy())


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of generated (N,1,16,16) images the classifier labels with their conditioning class."""
    return float((classifier.predict(to_digit_features(images)) == labels.numpy()).mean())
