"""Datasets: named input arrays (first axis = samples) plus optional labels.

A ``Dataset`` is what calibration, evaluation, sensitivity and benchmarking read. Zoo models ship their
own; users pass ``--data file.npz`` (one array per model input, named like the input or ``x`` for a single
input, optional ``labels``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devicefit.errors import DevicefitError, UserInputError, raise_all


@dataclass(frozen=True)
class Dataset:
    """Model inputs by name (first axis = samples) and optional integer labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        raise_all(_problems(self.inputs, self.labels), "dataset")

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def names(self) -> list[str]:
        return list(self.inputs)

    def take(self, n: int, *, start: int = 0) -> Dataset:
        """The samples ``start .. start+n`` (fewer if the dataset is shorter)."""
        sl = slice(start, start + n)
        return Dataset(
            {k: v[sl] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[sl],
            self.description,
        )

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield input dicts of at most ``batch_size`` samples, in order."""
        if batch_size <= 0:
            raise UserInputError(f"batch_size={batch_size} is not positive", "use a batch size of 1 or more")
        for i in range(0, len(self), batch_size):
            yield {k: v[i : i + batch_size] for k, v in self.inputs.items()}

    def ordered(self, names: Sequence[str]) -> list[np.ndarray]:
        """Arrays in the order of ``names`` (a model's input names)."""
        missing = [n for n in names if n not in self.inputs]
        if missing:
            raise UserInputError(
                f"dataset lacks input(s) {missing}; it has {self.names}",
                "name the arrays in the .npz like the model inputs (or 'x' for a single input)",
            )
        return [self.inputs[n] for n in names]

    def fingerprint(self) -> str:
        """sha256 over names, dtypes, shapes and bytes (used to key caches)."""
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            arr = np.ascontiguousarray(self.inputs[name])
            h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
            h.update(arr.tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


def _problems(inputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> list[DevicefitError]:
    """Every problem of a dataset's arrays, all of them (not just the first)."""
    if not inputs:
        return [UserInputError("dataset has no input arrays", "give at least one array per model input")]
    out: list[DevicefitError] = []
    counts = {name: int(arr.shape[0]) if arr.ndim else 0 for name, arr in inputs.items()}
    if len(set(counts.values())) != 1:
        out.append(UserInputError(f"dataset inputs disagree on the sample count (first axis): {counts}",
                                  "every input array must have the same first dimension"))
    n = next(iter(counts.values()))  # the sample count, as len(dataset) reads it
    n_labels = int(labels.shape[0]) if labels is not None and labels.ndim else 0
    if labels is not None and n_labels != n:
        out.append(UserInputError(f"dataset has {n} samples but {n_labels} labels", "give one label per sample"))
    return out


def load_npz(path: str | Path, input_names: Sequence[str] | None = None) -> Dataset:
    """Load ``--data file.npz``. A single array named ``x`` is renamed to the model's only input."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"data file not found: {p}", "pass an existing .npz (np.savez) file to --data")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as exc:
        raise UserInputError(f"cannot read {p} as .npz: {exc}", "write it with numpy.savez(path, x=..., labels=...)") from exc
    labels = arrays.pop("labels", None)
    if not arrays:
        raise UserInputError(f"{p} holds no input arrays", "add one array per model input (or 'x')")
    problems: list[DevicefitError] = []
    if input_names is not None:
        if list(arrays) == ["x"] and len(input_names) == 1:
            arrays = {input_names[0]: arrays["x"]}
        unknown = [k for k in arrays if k not in input_names]
        if unknown:
            problems.append(UserInputError(f"array(s) {unknown} are not model inputs {list(input_names)}",
                                           "name arrays like the model inputs, or use 'x' for a single-input model"))
    problems += _problems(arrays, labels)
    if len(problems) == 1:  # one problem: its own message, naming the file
        raise UserInputError(f"{p}: {problems[0].problem}", problems[0].fix)
    raise_all(problems, str(p))
    return Dataset(arrays, labels, description=f"npz:{p.name}")
