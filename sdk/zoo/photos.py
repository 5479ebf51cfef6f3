"""More ImageNet-style evaluation data from the photos that ship with scikit-image (no download).

20 images (the 8 of ``zoo:efficientnet-lite0`` plus brick, clock, coins, grass, gravel, moon, retina, the
right view of the stereo motorcycle, cell, page, text and colorwheel), 32 deterministic square crops each (the
16 crops of :data:`devicefit.zoo.efficientnet_lite0.CROPS`, each plain and mirrored). Crops alternate between
calibration and evaluation, so the two splits never share a crop: 320 + 320. Samples are ordered crop-major
(crop 0 of every photo, then crop 1 …), so the first *n* calibration samples already span all photos.
The arrays are cached as ``.npz`` under the devicefit cache (building them takes ~30 s of resizing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from devicefit.zoo.efficientnet_lite0 import CROPS, crop

VERSION = 1


def photos() -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(name, loader) of every photo used."""
    import skimage.data as d

    return [
        ("astronaut", d.astronaut), ("chelsea", d.chelsea), ("coffee", d.coffee), ("rocket", d.rocket),
        ("motorcycle", lambda: d.stereo_motorcycle()[0]), ("camera", d.camera),
        ("hubble_deep_field", d.hubble_deep_field), ("immunohistochemistry", d.immunohistochemistry),
        ("brick", d.brick), ("clock", d.clock), ("coins", d.coins), ("grass", d.grass), ("gravel", d.gravel),
        ("moon", d.moon), ("retina", d.retina), ("motorcycle_right", lambda: d.stereo_motorcycle()[1]),
        ("cell", d.cell), ("page", d.page), ("text", d.text), ("colorwheel", d.colorwheel),
    ]


def crop_plan() -> list[tuple[int, float, tuple[float, float], bool, bool]]:
    """(photo index, scale, position, flip, is_eval) of every crop, crop-major."""
    n = len(photos())
    return [
        (k, scale, pos, flip, (2 * i + int(flip) + k) % 2 == 1)
        for i, (scale, pos) in enumerate(CROPS)
        for flip in (False, True)
        for k in range(n)
    ]


def _cache() -> Path:
    from devicefit.kernels.paths import cache_root

    return cache_root() / "zoo" / f"photo-crops-v{VERSION}.npz"


def splits() -> tuple[np.ndarray, np.ndarray]:
    """(calib, eval): 320 disjoint 224x224 crops each, normalised as EfficientNet-Lite expects."""
    path = _cache()
    if path.exists():
        with np.load(path) as z:
            return z["calib"], z["eval"]
    images = [load() for _, load in photos()]
    out: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for k, scale, pos, flip, is_eval in crop_plan():
        out[int(is_eval)].append(crop(images[k], scale, pos, flip=flip))
    calib, ev = np.stack(out[0]), np.stack(out[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # one per process: parallel first runs
    np.savez(tmp, calib=calib, eval=ev)
    tmp.replace(path)
    return calib, ev
