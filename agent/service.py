"""The agent's request handlers, transport-neutral: devicefit.v1 request message in, response message out.

The gRPC server (server.py) and the MQTT agent (mqtt_agent.py) both call these. Errors never escape: each handler
answers with ``status.ok=False`` + code / problem / fix, so every transport carries them the same way.

Concurrency: uploads are independent (one stream per upload id); benchmarks are serialized among
themselves (two at once would measure each other); activations are serialized; a benchmark and a deploy
may run together. The active model stays loaded; a new one replaces it only after it has loaded and run
once, so a model that fails to load never takes the device down. A model not loaded before is first loaded
and run once in a child process (:mod:`devicefit.agent.trial_load`), so one that crashes or hangs the
runtime is refused while the agent keeps serving.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from devicefit.agent.benchmark import MAX_MIN_SECONDS, MAX_RUNS, benchmark_onnx, make_inputs
from devicefit.agent.rss import current_rss_mb
from devicefit.agent.runners import RUNNERS, Runner, runner_for
from devicefit.agent.store import Entry, ModelStore
from devicefit.agent.trial_load import TrialLoader
from devicefit.agent.upload import UploadSpec
from devicefit.errors import DevicefitError
from devicefit.protos import errors as E
from devicefit.protos import wire
from devicefit.protos.devicefit.v1 import agent_pb2, artifact_pb2, benchmark_pb2, common_pb2
from devicefit.protos.errors import AgentError
from devicefit.protos.schema import stamp
from devicefit.protos.signing import version_key


def handler(response_type: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Check the request's schema; turn any error into ``response_type(status=<error>)``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: AgentService, request: Any, **kw: Any) -> Any:
            try:
                if hasattr(request, "DESCRIPTOR"):  # streams check each message themselves
                    wire.check_schema(request)
                return stamp(fn(self, request, **kw))
            except AgentError as exc:
                status = wire.error_status(exc.code, exc.problem, exc.fix)
            except DevicefitError as exc:
                status = wire.error_status(E.INVALID_ARGUMENT, exc.problem, exc.fix)
            except OSError as exc:  # disk full, I/O error: nothing changed (state is written before it shows)
                status = wire.error_status(E.RESOURCE_EXHAUSTED if exc.errno in _SPACE_ERRNOS else E.INTERNAL,
                                           f"{type(exc).__name__}: {exc}", "free space on the device; nothing changed")
            except Exception as exc:  # report, never crash the agent
                log.exception("%s failed", fn.__name__)
                status = wire.error_status(E.INTERNAL, f"{type(exc).__name__}: {exc}", "see the agent's log")
            return stamp(response_type(status=status))

        return wrapper

    return deco


_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
log = logging.getLogger("devicefit.agent")

#: valid ranges of the benchmark parameters a client sets (inclusive)
BENCH_LIMITS = {"runs": (1, MAX_RUNS), "warmup": (0, 1_000), "threads": (0, 256), "batch_size": (1, 1024),
                "max_runs": (1, MAX_RUNS)}
#: ListModels drops the plan summary and metrics of entries once the answer would exceed this many bytes
MAX_LIST_BYTES = 1024 * 1024


def check_range(field: str, value: int) -> int:
    """``value`` if it lies in ``BENCH_LIMITS[field]``, else AgentError(INVALID_ARGUMENT) naming field, value, range."""
    lo, hi = BENCH_LIMITS[field]
    if not lo <= value <= hi:
        raise AgentError(E.INVALID_ARGUMENT, f"benchmark {field}={value} is out of range; valid: {lo}..{hi}",
                         f"pass {field} between {lo} and {hi}")
    return value


def upload_spec(pb: artifact_pb2.ArtifactManifest) -> UploadSpec:
    """The manifest of an upload's first chunk; its sha256 may be left to the stream (``running_sha256``)."""
    if pb.sha256:
        return UploadSpec.of(wire.manifest_from_proto(pb))
    probe = artifact_pb2.ArtifactManifest()
    probe.CopyFrom(pb)
    probe.sha256 = "0" * 64  # validate every other field now, before any byte is stored
    return UploadSpec.pending(wire.manifest_from_proto(probe))


def _crc32(chunk: Any) -> int | None:
    """The chunk's optional CRC32 (a decoded RawChunk or a generated UploadChunk)."""
    if isinstance(chunk, artifact_pb2.UploadChunk):
        return int(chunk.crc32) if chunk.HasField("crc32") else None
    return None if chunk.crc32 is None else int(chunk.crc32)


class LoadedModel:
    """The active model, loaded and proven to run."""

    def __init__(self, entry: Entry, runner: Runner, load_ms: float, first_run_ms: float) -> None:
        self.entry, self.runner, self.load_ms, self.first_run_ms = entry, runner, load_ms, first_run_ms


def load_and_run_once(entry: Entry, *, threads: int | None = None) -> LoadedModel:
    """Load ``entry`` with its runner and run it once on generated inputs; AgentError(LOAD_FAILED) if not."""
    try:
        spec = runner_for(entry.manifest.format)
        t0 = time.perf_counter()
        runner = spec.factory(entry.path, threads=threads)
        load_ms = (time.perf_counter() - t0) * 1e3
        feeds = make_inputs(runner.inputs())
        t0 = time.perf_counter()
        runner.run(feeds)
        first_ms = (time.perf_counter() - t0) * 1e3
    except Exception as exc:
        problem = getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}"
        raise AgentError(
            E.LOAD_FAILED,
            f"model {entry.model_id} ({entry.sha256[:12]}) did not load and run: {problem}",
            "the previously active model is still active; check the file with `devicefit bench FILE` on the host",
        ) from exc
    return LoadedModel(entry, runner, load_ms, first_ms)


class AgentService:
    """Handlers of the DeviceAgent service over one model store."""

    def __init__(self, store: ModelStore, *, device_id: str, agent_version: str = "",
                 trial: TrialLoader | None = None) -> None:
        self.store = store
        self.trial = trial if trial is not None else TrialLoader()
        self.device_id = device_id
        self.agent_version = agent_version
        self._bench_lock = threading.Lock()
        self._activate_lock = threading.Lock()
        self.loaded: LoadedModel | None = None
        self.startup_error: str | None = None
        active = store.active()
        if active is not None:
            try:  # trial-loaded first: a model that crashes the runtime (after an upgrade, say) must not make
                self._trial_load(active)  # the agent crash at every start; it then serves without it
                self.loaded = load_and_run_once(active)
                self.trial.mark_good(active.sha256)
            except AgentError as exc:  # keep serving the API; report it in info
                self.startup_error = exc.problem

    # ---- activation --------------------------------------------------------------------------------
    def _trial_load(self, entry: Entry) -> None:
        """Load and run ``entry`` once in a child process unless it has loaded before (AgentError if refused)."""
        self.trial.check(entry.path, sha256=entry.sha256, fmt=entry.manifest.format, label=entry.model_id[:64])

    def _activate(self, entry: Entry, *, rollback: bool = False) -> LoadedModel:
        self._check_trusted(entry, rollback=rollback)  # refuse untrusted files before running anything of them
        self._trial_load(entry)  # outside the lock: a hung trial delays no other activation
        with self._activate_lock:
            self._check_trusted(entry, rollback=rollback)
            new = load_and_run_once(entry)  # raises: the old model stays loaded and active
            self.trial.mark_good(entry.sha256)
            try:
                self.store.set_active(entry.sha256, rollback=rollback)  # on disk first, then in memory
            except BaseException:
                new.runner.close()
                raise
            old, self.loaded = self.loaded, new
            if old is not None:
                old.runner.close()
            return new

    def _check_trusted(self, entry: Entry, *, rollback: bool) -> None:
        """With a verifier: the entry's manifest is signed by a trusted key (records stored before the agent
        trusted a key included), and it is not older than the newest version activated, unless rolling back."""
        verifier = self.store.verifier
        if verifier is None:
            return
        verifier.verify(entry.manifest, bytes.fromhex(entry.sha256))
        newest = self.store.newest_version(entry.model_id)
        if not rollback and newest is not None and version_key(entry.manifest.version) < version_key(newest):
            raise AgentError(
                E.REPLAYED,
                f"model {entry.model_id} version {entry.manifest.version[:64]} is older than version {newest[:64]}, "
                "which was already activated here (a replayed artifact?)",
                "deploy a newer version, or roll back explicitly (devicefit rollback / the Rollback request)",
            )

    def activate_entry(self, entry: Entry) -> LoadedModel:
        """Load, run once and activate a stored entry (the old model stays active if this raises)."""
        return self._activate(entry)

    def _op_result(self, entry: Entry, loaded: LoadedModel | None) -> agent_pb2.ModelOpResult:
        active = self.store.active()
        return agent_pb2.ModelOpResult(
            status=wire.ok_status(),
            model_id=entry.model_id,
            sha256=entry.sha256,
            active_model_id=active.model_id if active else "",
            active_sha256=active.sha256 if active else "",
            load_ms=loaded.load_ms if loaded else 0.0,
            first_run_ms=loaded.first_run_ms if loaded else 0.0,
        )

    # ---- handlers ----------------------------------------------------------------------------------
    @handler(common_pb2.DeviceInfo)
    def info(self, req: common_pb2.InfoRequest) -> common_pb2.DeviceInfo:
        from devicefit.agent.sysinfo import probe_system

        active = self.store.active()
        pb = wire.info_to_proto(
            probe_system(self.store.root),
            device_id=self.device_id,
            agent_version=self.agent_version,
            formats=sorted({f for s in RUNNERS.values() if s.available() for f in s.formats}),
            agent_rss_mb=current_rss_mb(),
            active_model_id=active.model_id if active else "",
        )
        if req.measure_throughput:
            from devicefit.agent.microbench import measure_throughput

            with self._bench_lock:  # a micro-benchmark and a model benchmark would measure each other
                t = measure_throughput()
            extra = json.loads(pb.extra_json or "{}")
            extra["throughput_details"] = t.get("details", {})
            pb.extra_json = json.dumps(extra, sort_keys=True, default=str)
            pb.throughput.CopyFrom(
                common_pb2.Throughput(
                    peak_gops_fp32=float(t["peak_gops_fp32"]), peak_gops_int8=float(t["peak_gops_int8"]),
                    mem_bandwidth_gbs=float(t["mem_bandwidth_gbs"]),
                )
            )
        return pb

    @handler(artifact_pb2.UploadState)
    def query_upload(self, req: artifact_pb2.QueryUploadRequest) -> artifact_pb2.UploadState:
        info = self.store.upload_info(req.upload_id, req.sha256)
        pb = artifact_pb2.UploadState(
            status=wire.ok_status(), upload_id=req.upload_id, exists=info.exists,
            committed_offset=info.committed, already_stored=info.already_stored,
        )
        if info.manifest is not None:
            pb.manifest.CopyFrom(wire.manifest_to_proto(info.manifest))
        elif info.already_stored:  # this upload id finished before: name the blob it became
            pb.manifest.CopyFrom(wire.manifest_to_proto(self.store.resolve(info.stored_sha256).manifest))
        return pb

    @handler(artifact_pb2.UploadResult)
    def upload(self, chunks: Iterable[artifact_pb2.UploadChunk]) -> artifact_pb2.UploadResult:
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            raise AgentError(E.INVALID_ARGUMENT, "upload stream was empty", "send the manifest in the first chunk")
        wire.check_schema(first)
        if not first.HasField("manifest"):
            raise AgentError(E.INVALID_ARGUMENT, "the first upload chunk has no manifest", "send it in the first chunk")
        spec = upload_spec(first.manifest)
        res = artifact_pb2.UploadResult(
            status=wire.ok_status(), upload_id=first.upload_id, model_id=str(spec.fields["model_id"]),
            sha256=spec.sha256, size_bytes=spec.size_bytes,
        )
        if not spec.pending_digest and self.store.has_blob(spec.sha256):
            # nothing to store, and nothing to change: a manifest without bytes never rewrites a record
            self.store.check_upload_id(first.upload_id)
            entry = self.store.resolve(spec.sha256)
            fmt, size = str(spec.fields["format"]), spec.size_bytes
            if (fmt, size) != (entry.manifest.format, entry.manifest.size_bytes):
                raise AgentError(
                    E.INVALID_ARGUMENT,
                    f"manifest says format {fmt}, size_bytes {size} for sha256 {spec.sha256[:12]}, but the stored "
                    f"blob is format {entry.manifest.format}, size_bytes {entry.manifest.size_bytes}",
                    "send the manifest made from the file itself",
                )
            res.model_id = entry.model_id
            res.already_stored = True
            res.committed_offset = res.resumed_from = spec.size_bytes
        else:
            part = self.store.begin_upload(first.upload_id, spec)
            res.resumed_from = part.resumed_from
            try:
                chunk: Any = first
                while chunk is not None:
                    if chunk is not first:
                        wire.check_schema(chunk)
                    part.write(int(chunk.offset), chunk.data, _crc32(chunk), chunk.running_sha256 or None)
                    chunk = next(it, None)
                part.sync()  # all received bytes written (raises a write error)
                res.bytes_received = part.received - part.resumed_from
                if not part.complete:
                    part.close()
                    res.committed_offset = part.committed
                    res.status.CopyFrom(
                        wire.error_status(
                            E.INCOMPLETE, f"upload {first.upload_id} stopped at {part.committed} of "
                            f"{spec.size_bytes} bytes", "resume it (devicefit deploy resumes automatically)",
                        )
                    )
                    return res
                entry = part.finish()
                res.committed_offset = spec.size_bytes
                res.sha256 = entry.sha256
            finally:
                part.close()
        if first.activate:
            loaded = self._activate(entry)
            res.activated, res.load_ms, res.first_run_ms = True, loaded.load_ms, loaded.first_run_ms
        return res

    def _acquire_bench(self, is_active: Callable[[], bool] | None) -> None:
        """Take the benchmark lock, giving up (CANCELLED) when the client leaves while it waits."""
        while not self._bench_lock.acquire(timeout=0.2):
            if is_active is not None and not is_active():
                raise AgentError(E.CANCELLED, "the client left before the benchmark started")

    @handler(benchmark_pb2.BenchmarkReport)
    def benchmark(self, req: benchmark_pb2.BenchmarkRequest, *,
                  is_active: Callable[[], bool] | None = None) -> benchmark_pb2.BenchmarkReport:
        runs = check_range("runs", int(req.runs or 50))
        warmup = check_range("warmup", int(req.warmup) if req.has_warmup else 5)
        threads = check_range("threads", int(req.threads))
        batch_size = check_range("batch_size", int(req.batch_size or 1))
        max_runs = check_range("max_runs", int(req.max_runs or MAX_RUNS))
        min_seconds = float(req.min_seconds)
        if not 0.0 <= min_seconds <= MAX_MIN_SECONDS:  # NaN fails too
            raise AgentError(E.INVALID_ARGUMENT, f"benchmark min_seconds={min_seconds} is out of range; valid: "
                             f"0..{MAX_MIN_SECONDS:g}", f"pass min_seconds between 0 and {MAX_MIN_SECONDS:g}")
        entry = self.store.resolve(req.model_id)
        inputs = {t.name: wire.tensor_from_proto(t) for t in req.inputs} or None
        self._trial_load(entry)  # before the lock: the active model's benchmarks go on meanwhile
        self._acquire_bench(is_active)
        try:
            report = benchmark_onnx(
                entry.path,
                runs=runs,
                warmup=warmup,
                threads=threads or None,
                inputs=inputs,
                per_node=req.per_node,
                batch_size=batch_size,
                min_seconds=min_seconds,
                max_runs=max_runs,
                source=f"device:{self.device_id}",
                should_stop=None if is_active is None else (lambda: not is_active()),
            )
        except (AgentError, DevicefitError):
            raise
        except Exception as exc:
            if inputs is None:
                raise
            raise AgentError(E.INVALID_ARGUMENT, f"the supplied inputs do not fit model {entry.model_id}: "
                             f"{type(exc).__name__}: {exc}", "send tensors of the model's input names, dtypes, ranks") from exc
        finally:
            self._bench_lock.release()
        return wire.report_to_proto(report, device_id=self.device_id, model_id=entry.model_id, sha256=entry.sha256)

    @handler(agent_pb2.ModelList)
    def list_models(self, req: agent_pb2.ListModelsRequest) -> agent_pb2.ModelList:
        active = self.store.active_sha
        out = agent_pb2.ModelList(
            status=wire.ok_status(),
            models=[wire.entry_to_proto(e.manifest, stored_at=e.stored_at, active=e.sha256 == active)
                    for e in self.store.entries()],
            active_sha256=active or "",
            previous_sha256=self.store.previous,
        )
        # bounded answer: drop the largest plan summaries / metrics first (records an older agent accepted)
        for m in sorted(out.models, key=lambda m: -m.ByteSize()):
            if out.ByteSize() <= MAX_LIST_BYTES:
                break
            m.manifest.plan_summary_json = m.manifest.metrics_json = '{"truncated": true}'
        return out

    @handler(agent_pb2.ModelOpResult)
    def activate(self, req: agent_pb2.ActivateRequest) -> agent_pb2.ModelOpResult:
        if not req.model_id:
            raise AgentError(E.INVALID_ARGUMENT, "activate needs a model id", "pass the id or sha256 of a stored model")
        entry = self.store.resolve(req.model_id)
        return self._op_result(entry, self._activate(entry))

    @handler(agent_pb2.ModelOpResult)
    def rollback(self, req: agent_pb2.RollbackRequest) -> agent_pb2.ModelOpResult:
        entry = self.store.rollback_target()
        return self._op_result(entry, self._activate(entry, rollback=True))

    @handler(agent_pb2.ModelOpResult)
    def delete(self, req: agent_pb2.DeleteRequest) -> agent_pb2.ModelOpResult:
        if not req.model_id:
            raise AgentError(E.INVALID_ARGUMENT, "delete needs a model id", "pass the id or sha256 of a stored model")
        return self._op_result(self.store.delete(req.model_id), None)
