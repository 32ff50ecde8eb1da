"""Running one case: model x backend x precision -> Record.

This is the one code path every entry point uses (pytest suites, ``harness
run``, the worker subprocess): export, build on the engine, compare with the
PyTorch reference on several input sets, optionally measure, return a Record.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import backends
from harness.compare import CompareResult, compare, merge
from harness.errors import HarnessError
from harness.export import ExportedModel
from harness.inputs import calibration_set, input_sets
from harness.precision import precision_match
from harness.reference import cached_references
from harness.results import Record, machine_id
from harness.types import Precision, Status

FAILING = {Status.MISMATCH, Status.NONFINITE, Status.EXPORT_FAILED, Status.CONVERT_FAILED, Status.CRASH,
           Status.TIMEOUT, Status.ERROR}


@dataclass(frozen=True)
class CaseRequest:
    """Everything a (possibly separate) process needs to run one case."""

    model: str
    backend: str
    precision: Precision
    run_id: str = "adhoc"
    suite: str = "conformance"
    threads: int | None = None
    device: str = "cpu"
    zoo_files: tuple[str, ...] = ()
    measure: dict[str, Any] | None = None  # timing options; None = conformance only
    test_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return f"{self.model}-{self.backend}-{self.precision.value}"


def run_case(req: CaseRequest, workdir: Path | None = None) -> Record:
    """Run one case and return its record; every failure becomes a status, never an exception."""
    started = time.time()
    base = Record(run_id=req.run_id, model=req.model, backend=req.backend, precision=req.precision.value,
                  status=Status.ERROR.value, suite=req.suite, test_id=req.test_id or req.case_id,
                  machine_id=machine_id(), started_at=started)
    timings: dict[str, float] = {}
    try:
        record = _run(req, base, timings, workdir)
    except HarnessError as exc:
        record = _known_after_raise(req, replace(base, status=exc.status.value, reason=str(exc)))
    except Exception as exc:  # an engine error the backend did not classify, or a harness bug
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        record = _known_after_raise(req, replace(base, status=Status.ERROR.value, reason=f"{tb} [{_last_frame(exc)}]"))
    return replace(record, timings_s={**timings, **record.timings_s}, duration_s=round(time.time() - started, 3))


def _known_after_raise(req: CaseRequest, record: Record) -> Record:
    """A failure raised before comparison (export, convert, run) of a case with a known-failure entry is xfail."""
    if record.status not in {s.value for s in FAILING}:
        return record
    try:
        from model_zoo import get_model

        backend = backends.create(req.backend)
        known = get_model(req.model).known_failure(backend.name, req.precision)
    except Exception:
        return record
    if known is None or not known.active(backend.version()):
        return record
    return replace(record, status=Status.XFAIL.value, known_failure={"reason": known.reason, "link": known.link},
                   reason=f"known failure: {known.reason}; observed: {record.status}: {record.reason}")


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def _clock(timings: dict[str, float], key: str) -> Callable[[], None]:
    start = time.perf_counter()
    return lambda: timings.__setitem__(key, round(time.perf_counter() - start, 4))


def _run(req: CaseRequest, base: Record, timings: dict[str, float], workdir: Path | None) -> Record:
    from model_zoo import get_model, load_zoo_file

    for f in req.zoo_files:
        load_zoo_file(f)
    spec = get_model(req.model)
    backend = backends.create(req.backend, threads=req.threads, device=req.device)
    base = replace(base, backend=backend.name, backend_version=backend.version())
    known = spec.known_failure(backend.name, req.precision)
    if known is not None and not known.active(backend.version()):
        known = None
    if known is not None:
        base = replace(base, known_failure={"reason": known.reason, "link": known.link})
    model = ExportedModel(spec, **req.options.get("export", {}))
    if (why := backend.unsupported_reason(model, req.precision)) is not None:
        return replace(base, status=Status.UNSUPPORTED.value, reason=why)
    if spec.onnx_file is not None and not backend.needs_onnx:
        return replace(base, status=Status.UNSUPPORTED.value,
                       reason=f"ONNX-native model: no torch module ({backend.name} builds from the torch module)")

    done = _clock(timings, "reference")
    golden = _golden(spec) if spec.golden is not None else None  # ONNX-native: shipped outputs are the reference
    sets = input_sets(spec) if golden is None else golden[0]
    if req.precision is Precision.INT8:  # edge values outside the calibration range measure clipping only
        sets = [s for s in sets if s.in_distribution]
    ref32, ref64 = cached_references(model, {s.name: s.feeds for s in sets}) if golden is None else golden[1:]
    done()

    export_info: dict[str, Any] = {}
    if backend.needs_onnx:
        done = _clock(timings, "export")
        export_info = model.onnx.as_dict()
        done()
    calibration = calibration_set(spec) if req.precision is Precision.INT8 else None
    work = workdir or model.cache_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    done = _clock(timings, "build")
    session = backend.load(model, req.precision, work, calibration)
    done()
    with session:
        done = _clock(timings, "compare")
        results: list[CompareResult] = []
        tol = spec.tolerance(req.precision)
        for s in sets:
            try:
                out = session.run(s.feeds)
            except Exception as exc:
                raise _RunFailed(s.name, exc) from exc
            results.append(compare(ref32[s.name], out, tol, fp64_ref=ref64[s.name]))
        done()
        result = merge(results)
        executed = session.executed_precision
        record = replace(
            base,
            executed_precision=executed,
            precision_match=precision_match(req.precision, executed),
            metrics=result.worst(),
            outputs=[_output_dict(o) for o in result.outputs],
            input_sets=[s.name for s in sets],
            settings=dict(session.settings),
            artifact=str(session.artifact) if session.artifact else None,
            artifact_mb=_size_mb(session.artifact),
            export=export_info,
        )
        record = replace(record, **_verdict(req.precision, result, record))
        if req.options.get("accuracy") and spec.evaluate is not None:
            done = _clock(timings, "accuracy")
            record = replace(record, accuracy=float(spec.evaluate(session.run)))
            done()
        if req.measure is not None and record.status in (Status.PASS.value, Status.FALLBACK.value):
            record = _measure(req, spec, session, record)
    if known is not None:
        passed = record.status in (Status.PASS.value, Status.FALLBACK.value)
        record = replace(record, status=(Status.XPASS if passed else Status.XFAIL).value,
                         reason=f"known failure: {known.reason}" + (f" ({known.link})" if known.link else "")
                         + ("; it passed now: remove or update the entry" if passed else f"; observed: {record.reason}"))
    return record


def _golden(spec: Any) -> tuple[list[Any], dict[str, Any], dict[str, None]]:
    """Input sets and references of an ONNX-native model from its ``golden`` pairs (no FP64 reference)."""
    from harness.inputs import InputSet

    pairs = list(spec.golden())
    sets = [InputSet(f"golden-{i}", dict(feeds)) for i, (feeds, _) in enumerate(pairs)]
    return sets, {s.name: dict(out) for s, (_, out) in zip(sets, pairs, strict=True)}, {s.name: None for s in sets}


class _RunFailed(HarnessError):
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
    return {"status": Status.PASS.value, "reason": ""}


def _output_dict(o: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(o)


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


def _measure(req: CaseRequest, spec: Any, session: Any, record: Record) -> Record:
    """Latency, throughput sweep and roofline of the built session (harness.perf)."""
    from harness import perf

    return perf.measure_case(req, spec, session, record)
