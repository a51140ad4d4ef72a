"""One sync cycle of one path pair: scan, reconcile, guard, plan, execute, record."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from srsync.core.compare import Comparator
from srsync.core.entry import Kind, Problem, ScanResult, Snapshot
from srsync.core.ignore import IgnoreRules, filter_snapshot_paths
from srsync.core.paths import is_under, link_escapes
from srsync.core.reconcile import Mode, reconcile
from srsync.core.safety import check_guards
from srsync.endpoints.base import Endpoint
from srsync.engine.executor import Executor
from srsync.engine.reporter import Reporter
from srsync.engine.state import StateDB
from srsync.errors import SrsyncError
from srsync.jobspec import PairSpec
from srsync.plan import Plan, PlanStats, make_plan

OK = "ok"
PARTIAL = "partial"
HALTED = "halted"
FAILED = "failed"
CONFLICTS = "conflicts"
NOTHING = "unchanged"


@dataclass(slots=True)
class PairResult:
    job: str
    target: str
    pair: str
    outcome: str = OK
    plan: Plan | None = None
    applied: PlanStats = field(default_factory=PlanStats)
    problems: list[Problem] = field(default_factory=list)
    error: str = ""
    started: float = 0.0
    duration: float = 0.0
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class SyncOptions:
    dry_run: bool = False
    force: bool = False


def _drop_subtrees(snap: Snapshot, roots: set[str]) -> Snapshot:
    if not roots:
        return snap
    return {p: e for p, e in snap.items() if not any(is_under(p, r) for r in roots)}


def _apply_ignore_files(
    alpha: ScanResult, beta: ScanResult, base: IgnoreRules
) -> tuple[Snapshot, Snapshot]:
    """Filter both sides with the config rules plus every .srsyncignore of the mirror."""
    rules = base
    for directory in sorted(alpha.ignore_files, key=lambda d: (d.count("/"), d)):
        rules = rules.with_file(directory, alpha.ignore_files[directory])
    if rules is base:
        return alpha.entries, beta.entries
    out: list[Snapshot] = []
    for snap in (alpha.entries, beta.entries):
        gone = filter_snapshot_paths({p: e.is_dir for p, e in snap.items()}, rules)
        out.append({p: e for p, e in snap.items() if p not in gone})
    return out[0], out[1]


class PairSession:
    """Runs one path pair between two already-open endpoints."""

    def __init__(
        self,
        job: str,
        target: str,
        pair: PairSpec,
        alpha: Endpoint,
        beta: Endpoint,
        reporter: Reporter,
        state: StateDB | None,
        options: SyncOptions,
        stop: threading.Event | None = None,
    ) -> None:
        self.job = job
        self.target = target
        self.pair = pair
        self.alpha = alpha
        self.beta = beta
        self.reporter = reporter
        self.state = state
        self.options = options
        self.stop = stop or threading.Event()

    def _scan_both(self, rules: IgnoreRules) -> tuple[ScanResult, ScanResult]:
        def scan(side: str, ep: Endpoint) -> ScanResult:
            self.reporter.scan_started(self.job, side, ep.description)
            res = ep.scan(rules)
            self.reporter.scan_done(self.job, side, len(res.entries))
            return res

        with ThreadPoolExecutor(max_workers=2) as pool:
            fa = pool.submit(scan, "mirror", self.alpha)
            fb = pool.submit(scan, "target", self.beta)
            return fa.result(), fb.result()

    def _fill_digests(self, ep: Endpoint, snap: Snapshot, paths: list[str]) -> Snapshot:
        cache = self.state.cached_digests(ep.identity) if self.state else {}
        fresh: list[tuple[str, int, int, int, str]] = []
        out = dict(snap)
        for path in paths:
            e = snap[path]
            hit = cache.get(path)
            if hit and hit[0] == e.size and hit[1] == e.mtime_ns and hit[2] == e.ino:
                digest = hit[3]
            else:
                digest = ep.hash_file(path)
                fresh.append((path, e.size, e.mtime_ns, e.ino, digest))
            out[path] = replace(e, digest=digest)
        if self.state and fresh:
            self.state.store_digests(ep.identity, fresh)
        return out

    def run(self) -> PairResult:
        res = PairResult(self.job, self.target, self.pair.label, started=time.time(),
                         dry_run=self.options.dry_run)
        self.reporter.pair_started(self.job, self.target, self.pair.label)
        try:
            self._run(res)
        except SrsyncError as exc:
            # the endpoint became unusable (connection lost, stalled): the
            # pair failed; what was applied so far is whole, the rest is not
            res.outcome = FAILED
            res.error = str(exc)
        finally:
            res.duration = time.time() - res.started
            self.reporter.pair_done(self.job, res)
        return res

    def _run(self, res: PairResult) -> None:
        rules = IgnoreRules.from_patterns(list(self.pair.exclude))
        sa, sb = self._scan_both(rules)
        problems = [replace(p, side=p.side or "mirror") for p in sa.problems]
        problems += [replace(p, side=p.side or "target") for p in sb.problems]
        alpha, beta = _apply_ignore_files(sa, sb, rules)

        # Paths we could not read are frozen on both sides: never deleted,
        # never overwritten, until a later run can see them.
        frozen = {p.path for p in problems}
        for path, e in alpha.items():
            if e.kind is Kind.LINK and e.target is not None and link_escapes(path, e.target):
                frozen.add(path)
                problems.append(Problem(path, f"symlink points outside the root ({e.target}); skipped", "mirror"))
        alpha = _drop_subtrees(alpha, frozen)
        beta = _drop_subtrees(beta, frozen)
        for p in problems:
            self.reporter.problem(self.job, p)
        res.problems.extend(problems)

        if self.pair.checksum:
            both = [p for p, e in alpha.items() if e.is_file and (b := beta.get(p)) is not None
                    and b.is_file and b.size == e.size]
            alpha = self._fill_digests(self.alpha, alpha, both)
            beta = self._fill_digests(self.beta, beta, both)

        precision = max(self.alpha.capabilities.mtime_precision_ns,
                        self.beta.capabilities.mtime_precision_ns)
        cmp = Comparator(precision_ns=precision)
        mode = Mode(self.pair.sync_type)
        rec = reconcile({}, alpha, beta, mode, cmp)
        halts = check_guards(
            rec, alpha, beta,
            alpha_root_exists=sa.root_exists,
            max_delete_percent=self.pair.max_delete,
            mirror_label=self.alpha.description,
            target_label=self.beta.description,
        )
        plan = make_plan(rec, alpha, beta)
        res.plan = plan
        if halts and not self.options.force:
            reason = "; ".join(h.reason for h in halts)
            res.outcome = HALTED
            res.error = f"{reason}; nothing was changed (rerun with --force if this is intended)"
            self.reporter.halted(self.job, res.error)
            self.reporter.plan_ready(self.job, self.pair.label, plan, True)
            return
        self.reporter.plan_ready(self.job, self.pair.label, plan, self.options.dry_run)
        if self.options.dry_run:
            res.outcome = NOTHING if plan.empty else OK
            return

        if plan.operations or sb.temp_files:
            self.beta.ensure_root()
        for tmp in sb.temp_files:  # leftovers of an interrupted run of this job
            with contextlib.suppress(OSError):
                self.beta.remove(tmp, Kind.FILE)

        ex = Executor(self.alpha, self.beta, self.reporter, self.job, self.stop).run(plan)
        res.applied = ex.applied
        res.problems.extend(ex.problems)
        if ex.stopped:
            res.outcome = PARTIAL
            res.error = "stopped before the plan was complete"
        elif res.problems:
            res.outcome = PARTIAL
        else:
            res.outcome = NOTHING if plan.empty else OK

