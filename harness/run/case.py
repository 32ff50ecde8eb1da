"""Running one case: model x backend x precision -> Record.

``run_case`` is the one loop every entry point uses: the model suites, the
ONNX operator suite (its cases are ONNX-native models named ``onnx:<case id>``),
``harness run``, the perf suite and the child process of ``harness.exec``.
It resolves the model, builds it on the engine, compares with the reference on
several input sets (PyTorch FP32, or an ONNX-native model's shipped outputs),
optionally evaluates and measures, and returns a Record. Every failure
becomes a status; nothing raises.

Where a failure happens decides its status: an exception while building the
engine's model is ``convert_failed`` (``unsupported`` when the engine says the
op/opset is not implemented), one while running it is ``error``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import backends
from harness.core.compare import CompareResult, compare, compare_strict, merge
from harness.core.errors import ConversionError, HarnessError, first_line
from harness.core.machine import machine_id
from harness.core.options import CaseRequest
from harness.core.precision import precision_match
from harness.core.record import Record
from harness.core.spec import KnownFailure, ModelSpec
from harness.core.types import REFERENCE_BACKEND, Cause, Precision, Status
from harness.model.export import ExportedModel
from harness.model.inputs import InputSet, calibration_set, input_sets
from harness.model.reference import cached_references

NOT_IMPLEMENTED = re.compile(
    r"Unsupported model IR version|is under development|NOT_IMPLEMENTED|Could not find an implementation for"
    r"|No Op registered for"
    r"|is not a registered function/op|No conversion rule found|\bnot (?:yet )?supported\b|doesn't support"
    r"|Unsupported (?:operator|opset|op)\b", re.IGNORECASE)
"""Engine messages that mean "this op/opset/IR version is not implemented": ``unsupported``, not a failure."""


_PRELOADED: set[tuple[Any, ...]] = set()  # (imports, backend, threads, device) done in this process
_WARMED: set[tuple[str, int | None, str]] = set()  # (backend, threads, device) whose warm_up ran here


def preload(req: CaseRequest) -> None:
    """Import what ``req`` will import anyway and pay its engine's one-time start-up (``Backend.warm_up``,
    once per engine and thread count in this process), so that a case child can set the case's memory
    baseline after them: the case's peak is then its own, whichever cases ran in the child before it.

    torch is imported for every case but ONNX's backend test cases (``onnx:<id>``: the reference is
    shipped), so a child that runs only those never loads it (1.4 s). Failures are left to the case,
    which reports them with their cause.
    """
    names = () if req.model.startswith("onnx:") else ("torch",)
    if (names, req.backend, req.threads, req.device) in _PRELOADED:  # such a case came before (0.1 ms a case)
        return
    try:
        cls = backends.get(req.backend)
    except HarnessError:  # an unknown backend: the case reports it
        cls = None
    for name in names + (cls.sdk_modules if cls else ()):
        if name not in sys.modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)
    _PRELOADED.add((names, req.backend, req.threads, req.device))
    if cls is not None and (req.backend, req.threads, req.device) not in _WARMED:
        _WARMED.add((req.backend, req.threads, req.device))
        with contextlib.suppress(Exception):
            backend = cls(threads=req.threads, device=req.device)
            if backend.unavailable_reason() is None:
                backend.warm_up()


class _State:
    """What the loop learned before a failure: the record so far and the known-failure entry."""

    def __init__(self, base: Record) -> None:
        self.base = base
        self.known: KnownFailure | None = None


def run_case(req: CaseRequest, workdir: Path | None = None) -> Record:
    """Run one case and return its record; every failure becomes a status, never an exception."""
    started = time.time()
    state = _State(Record(run_id=req.run_id, model=req.model, backend=req.backend, precision=req.precision.value,
                          status=Status.ERROR.value, suite=req.suite, test_id=req.test_id or req.case_id,
                          machine_id=machine_id(), started_at=started))
    timings: dict[str, float] = {}
    try:
        record = _run(req, state, timings, workdir)
    except HarnessError as exc:
        status = exc.status
        if status is Status.CONVERT_FAILED and NOT_IMPLEMENTED.search(str(exc)):
            status = Status.UNSUPPORTED
        reason, detail = _readable(str(exc), exc.detail)
        record = _known(state, replace(state.base, status=status.value, reason=reason, detail=detail,
                                       cause=exc.cause.value))
    except Exception as exc:  # outside the engine's calls (those are wrapped): a bug of the harness
        record = _known(state, replace(state.base, status=Status.ERROR.value, reason=_describe(exc),
                                       cause=Cause.HARNESS.value))
    return replace(record, timings_s={**timings, **record.timings_s}, duration_s=round(time.time() - started, 3))


def _readable(message: str, detail: str = "") -> tuple[str, str]:
    """(reason, detail): the message's first line in full (up to REASON_LIMIT), the whole text as detail when
    anything was cut."""
    reason = first_line(message)
    key = next((ln.strip() for ln in message.splitlines()[1:] if NOT_IMPLEMENTED.search(ln)), None)
    if key and key not in reason:  # engines put the telling line deep in a multi-line error (OpenVINO)
        reason = first_line(f"{reason} \u2026 {key}")
    if reason != message.strip() and not detail:
        detail = message
    return reason, detail[:20000]


def canonical_backend(name: str) -> str:
    """The registry's name for a backend name or alias; an unknown name is returned as given."""
    try:
        return backends.canonical(name)
    except HarnessError:
        return name


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{text} [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else text


def _known(state: _State, record: Record) -> Record:
    """Apply the case's known-failure entry: a failure becomes ``xfail``, a pass ``xpass``."""
    known = state.known
    if known is None:
        return record
    failed = Status(record.status).failing
    passed = Status(record.status).passing
    if not (failed or passed):
        return record
    link = f" ({known.link})" if known.link else ""
    if passed:
        reason = f"known failure: {known.reason}{link}; it passed now: remove or update the entry"
    else:
        reason = f"known failure: {known.reason}{link}; observed: {record.status}: {record.reason}"
    cause = Cause.HARNESS.value if passed else (known.cause or record.cause)  # a stale entry is our list's fault
    return replace(record, status=(Status.XPASS if passed else Status.XFAIL).value, reason=reason, cause=cause,
                   known_failure={"reason": known.reason, "link": known.link})


PHASES = ("reference", "export", "build", "compare", "accuracy", "measure")
"""``Record.timings_s`` keys, in case order: PyTorch (or shipped) reference outputs, ONNX export, the engine's
build (convert, quantize, compile), comparison runs, task metric, latency measurement. Recorded also when the
phase fails; time outside them (model and backend set-up) is ``duration_s`` minus their sum."""


def phase_totals(records: list[Record]) -> dict[str, Any]:
    """Seconds per phase summed over ``records`` (``run.json``'s ``phases_s``): in total, by suite and by backend.

    ``process_start`` is the supervisor's time outside the case (spawning a child, its imports, hand-over:
    ``extra['worker']['overhead_s']``); ``other`` is case time outside the named phases (model and backend
    set-up); ``cases`` counts the records.
    """
    groups: dict[str, dict[str, dict[str, float]]] = {"total": {}, "by_suite": {}, "by_backend": {}}

    def add(bucket: dict[str, float], rec: Record) -> None:
        named = {k: float(v) for k, v in rec.timings_s.items() if isinstance(v, int | float)}
        for key, value in named.items():
            bucket[key] = bucket.get(key, 0.0) + value
        start = (rec.extra.get("worker") or {}).get("overhead_s")
        if isinstance(start, int | float):
            bucket["process_start"] = bucket.get("process_start", 0.0) + max(float(start), 0.0)
        bucket["other"] = bucket.get("other", 0.0) + max(float(rec.duration_s or 0.0) - sum(named.values()), 0.0)
        bucket["cases"] = bucket.get("cases", 0) + 1

    for rec in records:
        add(groups["total"].setdefault("all", {}), rec)
        add(groups["by_suite"].setdefault(rec.suite, {}), rec)
        add(groups["by_backend"].setdefault(rec.backend, {}), rec)

    def rounded(bucket: dict[str, float]) -> dict[str, float]:
        return {k: (int(v) if k == "cases" else round(v, 3)) for k, v in bucket.items()}

    return {"total": rounded(groups["total"].get("all", {})),
            "by_suite": {k: rounded(v) for k, v in sorted(groups["by_suite"].items())},
            "by_backend": {k: rounded(v) for k, v in sorted(groups["by_backend"].items())}}


@contextlib.contextmanager
def _phase(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[key]``, also when it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(timings.get(key, 0.0) + time.perf_counter() - start, 4)


def _resolve(req: CaseRequest) -> ModelSpec:
    from model_zoo import get_model, load_zoo_file

    for f in req.zoo_files:
        load_zoo_file(f)
    return get_model(req.model)


def _run(req: CaseRequest, state: _State, timings: dict[str, float], workdir: Path | None) -> Record:
    spec = _resolve(req)
    backend = backends.create(req.backend, threads=req.threads, device=req.device)
    base = state.base = replace(state.base, backend=backend.name, backend_version=backend.version(),
                                extra={**state.base.extra, **spec.record_extra})
    known = spec.known_failure(backend.name, req.precision)
    state.known = known if known is not None and known.active(backend.version()) else None
    if spec.not_runnable:
        return replace(base, status=Status.UNSUPPORTED.value, reason=spec.not_runnable, cause=Cause.HARNESS.value)
    if spec.not_comparable:
        return replace(base, status=Status.SKIPPED.value, reason=spec.not_comparable, cause=Cause.MODEL.value)
    model = ExportedModel(spec, exporter=req.export.exporter, opset=req.export.opset)
    if spec.onnx_file is not None and not backend.reads_onnx_files:
        return replace(base, status=Status.UNSUPPORTED.value, cause=Cause.MODEL.value,
                       reason=f"ONNX-native model: no torch module ({backend.name} builds from the torch module)")
    if (why := backend.unsupported_reason(model, req.precision)) is not None:
        return replace(base, status=Status.UNSUPPORTED.value, reason=why, cause=Cause.ENGINE.value)

    with _phase(timings, "reference"):
        sets, ref32, ref64 = _references(spec, model, req.precision)
    export_info: dict[str, Any] = {}
    if backend.needs_onnx:
        with _phase(timings, "export"):
            export_info = model.onnx.as_dict()
    with _phase(timings, "build"):
        calibration = calibration_set(spec) if req.precision is Precision.INT8 else None
        work = workdir or model.cache_dir / "work"
        work.mkdir(parents=True, exist_ok=True)
        try:
            session = backend.load(model, req.precision, work, calibration)
        except HarnessError:
            raise
        except Exception as exc:  # the engine's own error while parsing/compiling/quantizing
            raise ConversionError(f"{backend.name} could not build the model: {type(exc).__name__}: "
                                  f"{first_line(exc)}", detail=str(exc)) from exc
    with session:
        compare_fn = compare_strict if spec.golden is not None else compare
        tol = spec.tolerance(req.precision)
        results: list[CompareResult] = []
        with _phase(timings, "compare"):
            for s in sets:
                try:
                    out = session.run(s.feeds)
                except Exception as exc:
                    raise _RunFailed(s.name, exc) from exc
                results.append(compare_fn(ref32[s.name], out, tol, fp64_ref=ref64[s.name]))
        result = merge(results)
        executed = session.executed_precision
        record = replace(
            base,
            executed_precision=executed,
            precision_match=precision_match(req.precision, executed),
            metrics=result.worst(),
            outputs=[o.as_dict() for o in result.outputs],
            input_sets=[s.name for s in sets],
            settings=dict(session.settings),
            artifact=str(session.artifact) if session.artifact else None,
            artifact_mb=_size_mb(session.artifact),
            export=export_info,
        )
        record = replace(record, **_verdict(req.precision, result, record))
        if record.status != Status.PASS.value:  # the reference engine disagreeing with itself is the model's
            reference_itself = backend.name == REFERENCE_BACKEND and req.precision is Precision.FP32
            record = replace(record, cause=(Cause.MODEL if reference_itself else Cause.ENGINE).value)
        if req.accuracy and spec.evaluate is not None:
            with _phase(timings, "accuracy"):
                record = replace(record, accuracy=float(spec.evaluate(session.run)))
        if req.measure is not None and Status(record.status).passing:
            with _phase(timings, "measure"):
                record = _measure(req, spec, session, record)
    return _known(state, record)


def _measure(req: CaseRequest, spec: ModelSpec, session: Any, record: Record) -> Record:
    """Latency, throughput and roofline of a passing case; a failure to measure keeps the verdict and says why."""
    from harness.run import perf

    try:
        return perf.measure_case(req, spec, session, record)
    except Exception as exc:  # the verdict stands; the missing latency is explained in the record
        return replace(record, extra={**record.extra, "measure_error": _describe(exc)})


def _references(spec: ModelSpec, model: ExportedModel, precision: Precision,
                ) -> tuple[list[InputSet], dict[str, Any], dict[str, Any]]:
    """Input sets and FP32/FP64 references: PyTorch's, or an ONNX-native model's shipped outputs (no FP64)."""
    if spec.golden is not None:
        pairs = list(spec.golden())
        sets = [InputSet(f"golden-{i}", dict(feeds)) for i, (feeds, _) in enumerate(pairs)]
        return sets, {s.name: dict(out) for s, (_, out) in zip(sets, pairs, strict=True)}, {s.name: None for s in sets}
    sets = input_sets(spec)
    if precision is Precision.INT8:  # edge values outside the calibration range measure clipping only
        sets = [s for s in sets if s.in_distribution]
    ref32, ref64 = cached_references(model, {s.name: s.feeds for s in sets})
    return sets, ref32, ref64


class _RunFailed(HarnessError):
    cause = Cause.ENGINE

    def __init__(self, set_name: str, exc: BaseException) -> None:
        super().__init__(f"engine raised while running input set {set_name!r}: {type(exc).__name__}: {exc}")


def _verdict(precision: Precision, result: CompareResult, record: Record) -> dict[str, str]:
    if result.nonfinite:
        return {"status": Status.NONFINITE.value, "reason": f"{result.nonfinite} NaN/Inf values: {result.reason}"}
    if not result:
        return {"status": Status.MISMATCH.value, "reason": result.reason}
    if record.precision_match == "fallback":
        return {"status": Status.FALLBACK.value,
                "reason": f"outputs match, but {precision.value} was requested and the engine "
                          f"executed {record.executed_precision}"}
    if record.precision_match == "unknown" and precision is not Precision.FP32:
        return {"status": Status.FALLBACK.value,
                "reason": f"outputs match, but there is no evidence that {precision.value} executed: the engine "
                          "reported no kernel types for this model"}
    return {"status": Status.PASS.value, "reason": ""}


def _size_mb(path: Path | None) -> float | None:
    """Size on disk of an artifact and its companion files (.bin beside .param/.xml)."""
    if path is None or not Path(path).exists():
        return None
    p = Path(path)
    total = p.stat().st_size
    for companion in (p.with_suffix(".bin"), p.with_suffix(".onnx.data")):
        if companion != p and companion.exists():
            total += companion.stat().st_size
    return round(total / 1e6, 3)
