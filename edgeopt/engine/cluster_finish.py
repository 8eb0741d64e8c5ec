"""Finishing a structure on the cluster: engine/finish_job.py's `finish_structure` (export every precision, verify,
calibrate and quantize, evaluate on the runtime) run as a Ray task that writes into a folder of its own and
sends the files back with their sha256; the driver writes them under OUT/artifacts, checks every byte and loads
each artifact for the measurement here. A finish task whose worker dies twice is run again one candidate at a
time, and only the candidate that fails again is recorded as failed. The methods are RayExecutor's
(engine/cluster.py), which holds the Ray handles they use."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from edgeopt.engine.cluster_queue import Ahead, TaskQueue
from edgeopt.engine.cluster_worker import run_payload, where
from edgeopt.engine.finish_job import Done, Job, add_phase, finish_structure
from edgeopt.engine.ledger import FATAL
from edgeopt.errors import first_line

# a finish task is run again once only: a worker that dies twice on one export is more likely killed by it (a
# converter crashing on the graph) than lost, and the job is then retried one candidate at a time
FINISH_RETRIES = 1


def finish_task(boxed: list, built, job: Job) -> dict:
    """One structure's candidates finished on one worker (engine/finish_job.py: finish_structure), the artifacts
    written to a folder of its own and sent back: the job's record (without runtime sessions), every file of
    each candidate's artifact by its path under the out dir, their sha256, and where it ran."""
    import hashlib
    import tempfile

    import torch

    from edgeopt.formats import backend_for

    builder, threads = run_payload(boxed)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="edgeopt-finish-") as tmp:
        here = dataclasses.replace(builder, out_dir=Path(tmp)) if dataclasses.is_dataclass(builder) else builder
        done = finish_structure(here, built, job)
        done.sessions = {}  # runtime sessions stay here: the driver loads the files
        files: dict[str, bytes] = {}
        for c in done.cands.values():
            if c.artifact:
                for f in backend_for(c.runtime).artifact_files(Path(tmp) / c.artifact):
                    if f.is_file():
                        files[f.relative_to(tmp).as_posix()] = f.read_bytes()
    return {"done": done, "files": files, "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
            "where": where()}


class ClusterFinishing:
    """Finishing on the cluster, a part of RayExecutor: `ray`, `options`, `payload()`, `finish_task`, `builder`,
    `ahead`, `finish_tasks`, `taken_ahead` and `finish_retries` are the executor's."""

    def submit_finish(self, built, job: Job):
        self.finish_tasks += 1
        if dataclasses.is_dataclass(built):
            built = dataclasses.replace(built, source=None)  # its ONNX graph lives in a folder of this process
        return self.finish_task.options(**{**self.options, "max_retries": self.finish_retries}).remote(
            [self.payload()], built, job)

    def finish(self, built, job: Job) -> Done:
        """The job's record, its artifacts written under the out dir and loaded here: from the task run ahead
        of the search for this very job, else from a task run now."""
        key, ahead = self.ahead.pop(job.structure, (None, None))
        ref = ahead.ref if ahead is not None else None
        if ref is not None and key == job.key():
            self.taken_ahead += 1
        else:
            ref = self.submit_finish(built, job)
        try:
            got = self.ray.get(ref)
        except Exception as e:  # the worker died twice, or the result would not travel
            cause = getattr(e, "cause", None)
            if isinstance(cause, FATAL):  # a bad configuration, a missing backend: the run stops, as here
                raise cause from None
            return self._one_by_one(built, job, first_line(cause or e))
        return self._receive(got)

    def _one_by_one(self, built, job: Job, why: str) -> Done:
        """A job whose task failed, run again one candidate per task: only the candidate that fails again is
        recorded as failed (with why)."""
        done = Done(cands={})
        cands = {k: c.model_copy(deep=True) for k, c in job.cands.items()}
        for spec in job.specs:
            one = dataclasses.replace(job, specs=[spec], cands={k: c.model_copy(deep=True) for k, c in cands.items()},
                                      tags={spec.id: job.tags[spec.id]})
            try:
                got = self._receive(self.ray.get(self.submit_finish(built, one))) if len(job.specs) > 1 else None
            except FATAL:
                raise
            except Exception as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, FATAL):
                    raise cause from None
                why, got = first_line(cause or e), None
            if got is None:
                c = cands[spec.id]
                c.status, c.reason, c.failure = "failed", f"its export task failed on the cluster: {why}", "export"
                got = Done(cands={spec.id: c})
            cands.update(got.cands)
            done.cands.update(got.cands)
            done.stopped.update(got.stopped)
            done.seconds.update(got.seconds)
            done.phases.update(got.phases)
            done.decisions += got.decisions
            done.sessions.update(got.sessions)
        return done

    def _receive(self, got: dict) -> Done:
        """A finish task's record taken: its files written under the out dir and checked against the sha256 the
        worker sent, each ok candidate's artifact loaded for the measurement here (a file that arrived altered or
        does not load fails its candidate)."""
        from edgeopt.engine.cache import files_digest
        from edgeopt.formats import backend_for

        done: Done = got["done"]
        out = Path(self.builder.out_dir)
        t0 = time.perf_counter()
        for rel, data in got["files"].items():
            path = out / rel
            if path.resolve().is_relative_to(out.resolve()):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        for cid, c in done.cands.items():
            c.exported_on = got["where"]
            if c.status != "ok":
                continue
            backend = backend_for(c.runtime)
            digest = files_digest(backend.artifact_files(out / c.artifact), out)
            if not digest or any(got["sha256"].get(rel) != sha for rel, sha in digest.items()):
                c.status, c.failure = "failed", "transfer"
                c.reason = f"its artifact did not arrive intact from {got['where']} (sha256)"
                continue
            try:
                session = backend.load(out / c.artifact, precision=c.precision, threads=self.builder.threads)
                done.sessions[cid] = session
                # what runs here, where it is measured (a node of another ISA may run another precision)
                c.precision_executed = session.precision_executed
                c.int8_mac_fraction = session.info.get("int8_mac_fraction", c.int8_mac_fraction)
            except FATAL:
                raise
            except Exception as e:
                c.status, c.failure = "failed", "transfer"
                c.reason = f"its artifact, exported on the cluster, does not load here: {first_line(e)}"
        took = (time.perf_counter() - t0) / max(1, len(done.cands))
        for cid in done.cands:
            add_phase(done.phases, cid, "cluster fetch", took)
        return done

    def _finish_ahead(self, search, structure: str, built, drop: float | None, queue: TaskQueue) -> object | None:
        """Finish a structure a family task kept, ahead of the search, when every pending candidate of it is to
        be exported: queued after every build (a build leads to more work, an export to none)."""
        if isinstance(built, Exception) or structure in self.ahead:
            return None
        specs = search.finisher.exportable(structure, built)
        if not specs:
            return None
        job = search.finisher.job(structure, specs, screened=drop)
        ahead = Ahead(lambda: self.submit_finish(built, job))
        queue.add(ahead.start, ("finish", structure), 0, None)
        self.ahead[structure] = (job.key(), ahead)
        return ahead
