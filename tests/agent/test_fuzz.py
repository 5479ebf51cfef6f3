"""Hypothesis fuzzing of the agent's parsers (bounded: 2,000 examples each, no deadline): a malformed input is
refused with a clear code, never INTERNAL, never an exception escaping the handler."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicefit.agent.service import AgentService
from devicefit.agent.store import ModelStore
from devicefit.protos import errors as E
from devicefit.protos.chunks import decode_upload_chunk
from devicefit.protos.devicefit.v1 import artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.schema import stamp

pytestmark = pytest.mark.timeout(600)
FUZZ = settings(max_examples=2000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> AgentService:
    return AgentService(ModelStore(tmp_path_factory.mktemp("fuzz")), device_id="fuzz")


_text = st.text(max_size=40)
_json = st.one_of(st.just(""), st.just("{}"), _text, st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _text),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3), max_leaves=6,
).map(lambda v: __import__("json").dumps(v)))
manifests = st.builds(
    artifact_pb2.ArtifactManifest,
    model_id=st.one_of(st.just("m"), _text), version=_text, format=st.integers(0, 4),
    size_bytes=st.integers(0, 2**64 - 1), sha256=st.one_of(st.just(""), st.just("a" * 64), _text),
    signature=st.binary(max_size=80), plan_summary_json=_json, metrics_json=_json,
    file_name=st.one_of(st.just(""), _text),
)


@FUZZ
@given(m=manifests, upload_id=st.one_of(st.just("u1"), _text), data=st.binary(max_size=64),
       offset=st.integers(0, 2**64 - 1), running=st.binary(max_size=40))
def test_fuzz_upload_first_chunk(service: AgentService, m: artifact_pb2.ArtifactManifest, upload_id: str, data: bytes,
                                 offset: int, running: bytes) -> None:
    chunk = stamp(artifact_pb2.UploadChunk(upload_id=upload_id, manifest=m, data=data, offset=offset,
                                           running_sha256=running))
    res = service.upload([chunk])
    assert res.status.code != E.INTERNAL, res.status


@FUZZ
@given(buf=st.binary(max_size=200))
def test_fuzz_raw_chunk_decoder(buf: bytes) -> None:
    try:
        decode_upload_chunk(buf)
    except AgentError as exc:
        assert exc.code == E.INVALID_ARGUMENT


tensors = st.builds(common_pb2.Tensor, name=st.sampled_from(["input_ids", "attention_mask", "x"]),
                    dtype=st.one_of(st.sampled_from(["int64", "float32", "object", "V0", "S3", "bool"]), _text),
                    shape=st.lists(st.integers(-2**63, 2**63 - 1), max_size=5), data=st.binary(max_size=64))


@FUZZ
@given(runs=st.integers(0, 2**32 - 1), warmup=st.integers(0, 2**32 - 1), threads=st.integers(0, 2**32 - 1),
       batch=st.integers(0, 2**32 - 1), inputs=st.lists(tensors, max_size=2), model=_text)
def test_fuzz_benchmark_request(service: AgentService, runs: int, warmup: int, threads: int, batch: int,
                                inputs: list[common_pb2.Tensor], model: str) -> None:
    req = stamp(benchmark_pb2.BenchmarkRequest(runs=runs, warmup=warmup, has_warmup=True, threads=threads,
                                               batch_size=batch, inputs=inputs, model_id=model))
    rep = service.benchmark(req)
    assert rep.status.code != E.INTERNAL, rep.status


def test_fuzz_store_state_file_corrupted(tmp_path: Path) -> None:
    """A corrupted state.json is a clear error at start, not a crash with a traceback."""
    root = tmp_path / "s"
    ModelStore(root)
    (root / "state.json").write_text('{"models": [1, 2')
    with pytest.raises(AgentError, match="unreadable"):
        ModelStore(root)
