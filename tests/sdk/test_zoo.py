"""The offline zoo: registry, trained digits CNN, MiniLM weights/tokenizer/data, EfficientNet-Lite0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devicefit import zoo
from devicefit.bundle import ModelBundle
from devicefit.errors import ModelLoadError


def test_names_and_unknown() -> None:
    assert zoo.names() == ["digits-cnn", "efficientnet-lite0", "minilm-l6"]
    with pytest.raises(ModelLoadError) as err:
        zoo.get("zoo:resnet")
    assert "zoo:minilm-l6" in str(err.value.fix) and "zoo:digits-cnn" in str(err.value.fix)


def test_zoo_import_does_not_import_torch() -> None:
    code = "import sys, devicefit.zoo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / "zoo" and (tmp_path / "zoo").is_dir()


def _predict(bundle: ModelBundle, x: np.ndarray) -> np.ndarray:
    assert bundle.module is not None
    with torch.inference_mode():
        return bundle.module(torch.from_numpy(x)).numpy()


@pytest.mark.slow
def test_digits_accuracy_and_split(digits_bundle: ModelBundle) -> None:
    b = digits_bundle
    assert b.input_names == ["x"] and b.output_names == ["logits"] and b.metric == "accuracy"
    assert b.eval is not None and b.calib is not None and b.eval.labels is not None
    assert len(b.eval) == 450 and len(b.calib) == 1347  # 25 % stratified hold-out of 1797
    assert np.bincount(b.eval.labels).min() >= 43  # every class present in the held-out split
    x = b.eval.inputs["x"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0
    acc = float(np.mean(_predict(b, x).argmax(1) == b.eval.labels))
    assert acc >= 0.97, acc
    names = {n for n, m in b.module.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}  # type: ignore[union-attr]
    assert names == {"conv1", "conv2", "fc1", "fc2"}


@pytest.mark.slow
def test_digits_training_is_deterministic(digits_bundle: ModelBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICEFIT_CACHE", str(tmp_path))  # cold cache: trains now
    cold = zoo.get("digits-cnn")
    assert (tmp_path / "zoo" / "digits-cnn-v1.pt").is_file()
    warm = zoo.get("digits-cnn")
    assert cold.module is not None and warm.module is not None and digits_bundle.module is not None
    for ref in (warm.module.state_dict(), digits_bundle.module.state_dict()):
        for k, v in cold.module.state_dict().items():
            assert torch.equal(v, ref[k]), k


@pytest.mark.slow
def test_minilm_weights_params_and_names(minilm_bundle: ModelBundle) -> None:
    from safetensors.torch import load_file

    from devicefit.zoo import minilm

    m = minilm_bundle.module
    assert m is not None
    params = sum(p.numel() for p in m.parameters())
    assert abs(params - 22.7e6) / 22.7e6 <= 0.01, params
    file_keys = set(load_file(str(minilm.model_dir() / "model.safetensors")))
    model_keys = set(m.state_dict())
    assert model_keys == file_keys - {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}
    att = m.get_submodule("encoder.layer.0.attention.self")
    assert att.num_heads == 12 and att.head_dim == 32
    assert minilm_bundle.input_names == ["input_ids", "attention_mask"]
    assert minilm_bundle.output_names == ["embedding"] and minilm_bundle.metric == "cosine"
    assert minilm_bundle.dynamic_axes["input_ids"] == {0: "batch", 1: "seq"}


def _embed(bundle: ModelBundle, sentences: list[str]) -> np.ndarray:
    from devicefit.zoo import minilm

    enc = minilm.tokenize(sentences)
    assert bundle.module is not None
    with torch.inference_mode():
        return bundle.module(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])).numpy()


@pytest.mark.slow
def test_minilm_semantics(minilm_bundle: ModelBundle) -> None:
    z = _embed(minilm_bundle, [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The stock market fell sharply today.",
        "Share prices dropped on the exchange this morning.",
    ])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    sim = z @ z.T
    for a, b, unrelated in ((0, 1, (2, 3)), (2, 3, (0, 1))):
        assert sim[a, b] > 0.5
        assert sim[a, b] > max(sim[a, u] for u in unrelated) + 0.3


@pytest.mark.slow
def test_minilm_padding_is_masked_and_heads_prunable(minilm_bundle: ModelBundle) -> None:
    import copy

    ev = minilm_bundle.eval
    assert ev is not None
    ids, mask = ev.inputs["input_ids"][:4], ev.inputs["attention_mask"][:4]
    m = minilm_bundle.module
    assert m is not None
    n = int(mask.sum(1).max())
    with torch.inference_mode():
        full = m(torch.from_numpy(ids), torch.from_numpy(mask))
        short = m(torch.from_numpy(ids[:, :n].copy()), torch.from_numpy(mask[:, :n].copy()))
    torch.testing.assert_close(full, short, atol=1e-5, rtol=1e-4)
    # remove heads 0..3 of layer 0: shrink q/k/v out_features, output.dense in_features, num_heads
    pruned = copy.deepcopy(m)
    att = pruned.get_submodule("encoder.layer.0.attention")
    keep = torch.arange(4 * att.self.head_dim, 12 * att.self.head_dim)
    for lin in (att.self.query, att.self.key, att.self.value):
        lin.weight = torch.nn.Parameter(lin.weight[keep].clone())
        lin.bias = torch.nn.Parameter(lin.bias[keep].clone())
        lin.out_features = len(keep)
    att.output.dense.weight = torch.nn.Parameter(att.output.dense.weight[:, keep].clone())
    att.output.dense.in_features = len(keep)
    att.self.num_heads = 8
    with torch.inference_mode():
        out = pruned(torch.from_numpy(ids), torch.from_numpy(mask))
    assert out.shape == full.shape
    cos = torch.nn.functional.cosine_similarity(out, full).min().item()
    assert 0.5 < cos < 0.99999  # changed, but still the same model


@pytest.mark.slow
def test_minilm_data(minilm_bundle: ModelBundle) -> None:
    from devicefit.zoo import minilm

    calib_s, eval_s = minilm.splits()
    assert len(calib_s) >= 256 and len(eval_s) >= 256 and not set(calib_s) & set(eval_s)
    assert minilm.splits() == (calib_s, eval_s)  # deterministic
    assert all(s.endswith(".") and len(s.split()) >= 6 for s in calib_s + eval_s)
    cal, ev = minilm_bundle.calib, minilm_bundle.eval
    assert cal is not None and ev is not None and len(cal) == len(calib_s) and len(ev) == len(eval_s)
    for ds in (cal, ev):
        assert ds.inputs["input_ids"].dtype == np.int64 and ds.inputs["input_ids"].shape[1] == minilm.SEQ_LEN
        assert int(ds.inputs["attention_mask"].sum(1).max()) < minilm.SEQ_LEN  # nothing truncated
        assert (ds.inputs["input_ids"][:, 0] == 101).all()  # [CLS]


@pytest.mark.slow
def test_efficientnet_top1_sanity_and_data(effnet_bundle: ModelBundle) -> None:
    import skimage.data

    from devicefit.zoo import efficientnet_lite0 as eff

    b = effnet_bundle
    assert b.metric == "top1_agreement" and b.input_names == ["x"] and b.output_names == ["logits"]
    photos = np.stack([eff.preprocess(skimage.data.chelsea()), eff.preprocess(skimage.data.coffee())])
    top1 = _predict(b, photos).argmax(1)
    assert 281 <= top1[0] <= 285, top1  # a cat (tabby / tiger cat / Persian / Siamese / Egyptian cat)
    assert top1[1] == 967, top1  # espresso
    cal, ev = b.calib, b.eval
    assert cal is not None and ev is not None and len(cal) >= 64 and len(ev) >= 64
    assert cal.inputs["x"].shape[1:] == (3, 224, 224) and cal.inputs["x"].dtype == np.float32
    cal_ids, ev_ids = eff.crop_ids()
    assert len(cal_ids) == len(cal) and len(ev_ids) == len(ev) and not set(cal_ids) & set(ev_ids)
    assert len(set(_predict(b, ev.inputs["x"][::4]).argmax(1))) >= 6  # varied photos, varied classes
