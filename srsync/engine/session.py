"""One sync cycle of one path pair: scan, reconcile, guard, plan, execute, record."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from srsync.background import in_background
from srsync.core.compare import Comparator
from srsync.core.entry import Entry, Kind, Problem, ScanResult, Snapshot
from srsync.core.ignore import IgnoreRules, filter_snapshot_paths
from srsync.core.paths import (
    ROOT,
    RelPath,
    case_collisions,
    is_under,
    link_escapes,
    parent,
    under_any,
)
from srsync.core.quiet import snapshot_summaries
from srsync.core.reconcile import (
    ALPHA,
    BETA,
    Conflict,
    Mode,
    Policy,
    Reconciliation,
    needs_digest,
    reconcile,
)
from srsync.core.record import next_ancestor
from srsync.core.safety import check_guards
from srsync.endpoints.base import Endpoint
from srsync.engine.executor import Executor
from srsync.engine.reporter import Reporter
from srsync.engine.state import StateDB
from srsync.engine.trash import EXCLUDE_PATTERN as TRASH_EXCLUDE
from srsync.engine.trash import Trash, new_run_id, purge_expired
from srsync.errors import ConnectError, SrsyncError
from srsync.jobspec import ONE2ONE, PairSpec
from srsync.plan import NewTreePlan, Plan, PlanStats, make_plan

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
    conflicts: list[Conflict] = field(default_factory=list)  # left for review


@dataclass(frozen=True, slots=True)
class SyncOptions:
    dry_run: bool = False
    force: bool = False


def _drop_subtrees(snap: Snapshot, roots: set[str]) -> Snapshot:
    if not roots:
        return snap
    return {p: e for p, e in snap.items() if not any(is_under(p, r) for r in roots)}


def _apply_ignore_files(
    alpha: ScanResult, beta: ScanResult, base: IgnoreRules, two_way: bool
) -> tuple[Snapshot, Snapshot]:
    """Filter both sides with the config rules plus the .srsyncignore files.

    One-way, the mirror's ignore files rule both sides; two-way, both sides'.
    """
    rules = base
    files = dict(beta.ignore_files) if two_way else {}
    for directory, text in alpha.ignore_files.items():
        theirs = files.get(directory)
        files[directory] = text if theirs in (None, text) else f"{theirs}\n{text}"
    for directory in sorted(files, key=lambda d: (d.count("/"), d)):
        rules = rules.with_file(directory, files[directory])
    if rules is base:
        return alpha.entries, beta.entries
    out: list[Snapshot] = []
    for snap in (alpha.entries, beta.entries):
        gone = filter_snapshot_paths({p: e.is_dir for p, e in snap.items()}, rules)
        out.append({p: e for p, e in snap.items() if p not in gone})
    return out[0], out[1]


def _fill_quiet(res: ScanResult, stored: Snapshot, hidden: dict[RelPath, int]) -> None:
    """Put back the files and links a scan left out where only this side was quiet.

    They are the ancestor's, field for field (that is what quiet means), less
    the digest, which was taken of the content then, not now.
    """
    alone = res.quiet.keys() - hidden.keys()
    if not alone:
        return
    dir_kind = Kind.DIR
    for path, e in stored.items():
        if e.kind is not dir_kind and parent(path) in alone:
            res.entries[path] = Entry(e.kind, e.size, e.mtime_ns, e.mode, e.target)


class _PlanAhead:
    """A one-way run's plan for an empty target, built while this process would wait.

    The mirror's scan hands over its entries: a remote helper's as they arrive
    (``feed``, see ``Endpoint.scan``'s ``listed``), built into a ``NewTreePlan`` by a
    thread once the target's scan has found nothing there (``target_scanned``), so
    reconciling and planning take place while the helper still lists; a listing made
    here, whole once it is done (``speculative``), built at once even before the
    target's verdict, while a remote target's helper is still starting.  A target
    holding anything makes it drop them all: that run plans as usual.
    """

    def __init__(self) -> None:
        self.plan = NewTreePlan()
        self._pieces: queue.SimpleQueue[tuple[list[tuple[RelPath, Entry]], bool] | None] = queue.SimpleQueue()
        self._verdict = threading.Event()
        self._use = False  # the target is empty: build
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def feed(self, piece: list[tuple[RelPath, Entry]], speculative: bool = False) -> None:
        """(From the mirror's scanning thread.)  ``speculative``: build it before the
        target's verdict (work that may be thrown away, done while waiting for it)."""
        with self._lock:
            if self._closed:
                return  # (not in a run: the scans end before close; the check is cheap)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="plan-ahead", daemon=True)
                self._thread.start()
            self._pieces.put((piece, speculative))

    def target_scanned(self, res: ScanResult) -> None:
        self._use = not (res.root_exists and (res.entries or res.quiet or res.temp_files or res.problems))
        self._verdict.set()

    def _work(self) -> None:
        while (item := self._pieces.get()) is not None:
            piece, speculative = item
            if not speculative:
                self._verdict.wait()
            if self._use or (speculative and not self._verdict.is_set()):
                self.plan.add(piece)

    def take(self, snap: Snapshot, listed: int) -> NewTreePlan | None:
        """The plan built, when it holds exactly ``snap`` (the mirror's ``listed`` entries,
        none filtered out since); else None.  Ends the thread."""
        self.close()
        if not self._use or self.plan.count != listed or len(snap) != listed:
            return None
        return self.plan

    def close(self) -> None:
        """Stop: the scan is over (or failed).  Safe to call more than once."""
        self._verdict.set()
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._pieces.put(None)
            thread.join()


class PairSession:
    """Runs one path pair between two already-open endpoints."""

    def __init__(
        self,
        job: str,
        target: str,
        pair: PairSpec,
        alpha: Endpoint | Future[Endpoint],
        beta: Endpoint | Future[Endpoint],
        reporter: Reporter,
        state: StateDB | None,
        options: SyncOptions,
        stop: threading.Event | None = None,
    ) -> None:
        """``alpha``/``beta`` may still be opening (a Future): each side's scan waits for
        its own endpoint only, so a local side is scanned while the remote one connects."""
        self.job = job
        self.target = target
        self.pair = pair
        self._sources = (alpha, beta)
        self.alpha: Endpoint
        self.beta: Endpoint
        if isinstance(alpha, Endpoint):
            self.alpha = alpha
        if isinstance(beta, Endpoint):
            self.beta = beta
        self.reporter = reporter
        self.state = state
        self.options = options
        self.stop = stop or threading.Event()
        self._ahead: _PlanAhead | None = None

    def _scan_both(
        self, rules: IgnoreRules, expect: dict[RelPath, str] | None = None, ahead: _PlanAhead | None = None
    ) -> tuple[ScanResult, ScanResult]:
        def scan(side: str, source: Endpoint | Future[Endpoint]) -> tuple[Endpoint, ScanResult]:
            ep = source.result() if isinstance(source, Future) else source
            self.reporter.scan_started(self.job, side, ep.description)
            if ahead is not None and side == "mirror" and ep.lists_ahead:
                res = ep.scan(rules, expect, listed=ahead.feed)
            else:
                res = ep.scan(rules, expect)
                if ahead is not None and side == "mirror" and res.entries:
                    ahead.feed(list(res.entries.items()), speculative=True)
            if ahead is not None and side == "target":
                ahead.target_scanned(res)
            self.reporter.scan_done(self.job, side, len(res.entries) + sum(res.quiet.values()))
            return ep, res

        with ThreadPoolExecutor(max_workers=2) as pool:
            fa = pool.submit(scan, "mirror", self._sources[0])
            fb = pool.submit(scan, "target", self._sources[1])
            (self.alpha, sa), (self.beta, sb) = fa.result(), fb.result()
        return sa, sb

    def _fill_digests(self, ep: Endpoint, snap: Snapshot, paths: list[str]) -> Snapshot:
        cache = self.state.cached_digests(ep.identity) if self.state else {}
        fresh: list[tuple[str, int, int, int, str]] = []
        out = dict(snap)
        todo: list[str] = []
        for path in paths:
            e = snap[path]
            hit = cache.get(path)
            if hit and hit[0] == e.size and hit[1] == e.mtime_ns and hit[2] == e.ino:
                out[path] = e.replace(digest=hit[3])
            else:
                todo.append(path)
        # uncached files are hashed in one batch (the remote helper hashes them all in one call)
        for path, got in zip(todo, ep.hash_files(todo), strict=True):
            if isinstance(got, OSError):
                raise got
            e = snap[path]
            fresh.append((path, e.size, e.mtime_ns, e.ino, got))
            out[path] = e.replace(digest=got)
        if self.state and fresh:
            self.state.store_digests(ep.identity, fresh)
        return out

    @property
    def pair_key(self) -> str:
        """Identifies a path pair's two-way state: job, mirror and target locations."""
        return f"{self.job}|{self.pair.mirror}|{self.pair.target}"

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
            if self._ahead is not None:
                self._ahead.close()
                self._ahead = None
            res.duration = time.time() - res.started
            self.reporter.pair_done(self.job, res)
        return res

    def _run(self, res: PairResult) -> None:
        two_way = self.pair.sync_type == ONE2ONE
        # the trash folder is never synced, on either side
        rules = IgnoreRules.from_patterns([*self.pair.exclude, TRASH_EXCLUDE])
        # Two-way, the ancestor's directory summaries go to both scans: where
        # both sides still hold exactly the ancestor's files and links, none of
        # them is listed, loaded, compared or recorded (see srsync.core.summary).
        # One-way, the mirror's directory summaries from the last run go to both
        # scans: a directory both sides still summarise so holds the same files
        # and links on both, so there is nothing to do there; one quiet on one
        # side only is listed again there (see _relist_one_sided).
        summaries = None
        mirror_summaries = not two_way and self.state is not None and not self.pair.checksum
        if two_way and self.state is not None:
            summaries = self.state.ancestor_summaries(self.pair_key)
        elif mirror_summaries and self.state is not None:
            summaries = self.state.mirror_summaries(self.pair_key) or None
        # a one-way run told nothing of earlier runs lists every path, and may find the
        # target empty (a first run): the mirror's entries then go into the plan while
        # this process would wait (see _PlanAhead; closed by run())
        self._ahead = _PlanAhead() if not two_way and summaries is None else None
        sa, sb = self._scan_both(rules, None if self.pair.checksum else summaries, self._ahead)
        if not two_way and (sa.quiet or sb.quiet):
            self._relist_one_sided(rules, sa, sb)
        if not two_way and not self.options.dry_run:
            # at least this many new paths for the target: a local one starts its writer
            # now, on the core that reconciling and planning leave idle, not when the
            # executor first needs it (see LocalEndpoint.expect_writes)
            self.beta.expect_writes(
                len(sa.entries) + sum(sa.quiet.values()) - len(sb.entries) - sum(sb.quiet.values())
            )
        # directory -> files and links left out on both sides
        hidden = {d: n for d, n in sa.quiet.items() if d in sb.quiet}
        stored: Snapshot = {}
        if two_way and self.state is not None:
            stored = self.state.load_ancestor(self.pair_key, skip=hidden)
            _fill_quiet(sa, stored, hidden)
            _fill_quiet(sb, stored, hidden)
        problems = [replace(p, side=p.side or "mirror") for p in sa.problems]
        problems += [replace(p, side=p.side or "target") for p in sb.problems]
        alpha, beta = _apply_ignore_files(sa, sb, rules, two_way)

        # Paths we could not read are frozen on both sides: never deleted,
        # never overwritten, until a later run can see them.
        # (Never the root itself: a bad name reported there would freeze the
        # whole tree; an unreadable root shows as empty, which the guards and
        # the executor's re-checks already handle.)
        frozen = {p.path for p in problems if p.path != ROOT}
        link_kind = Kind.LINK
        for label, snap in (("mirror", alpha), ("target", beta)) if two_way else (("mirror", alpha),):
            for path, e in snap.items():
                if e.kind is link_kind and e.target is not None and link_escapes(path, e.target):
                    frozen.add(path)
                    problems.append(Problem(path, f"symlink points outside the root ({e.target}); skipped", label))
        frozen |= self._case_collisions(alpha, beta, two_way, problems)
        alpha = _drop_subtrees(alpha, frozen)
        beta = _drop_subtrees(beta, frozen)
        for p in problems:
            self.reporter.problem(self.job, p)
        res.problems.extend(problems)

        precision = max(self.alpha.capabilities.mtime_precision_ns,
                        self.beta.capabilities.mtime_precision_ns)
        cmp = Comparator(precision_ns=precision, dir_mtime=not two_way)
        ancestor: Snapshot = {}
        decisions: dict[str, Policy] = {}
        if two_way and self.state is not None:
            ancestor = _drop_subtrees(stored, frozen)
            decisions = {p: Policy(k) for p, k in self.state.decisions(self.pair_key).items()}

        if self.pair.checksum:
            both = [p for p, e in alpha.items() if e.is_file and (b := beta.get(p)) is not None
                    and b.is_file and b.size == e.size]
        elif two_way:
            both = needs_digest(ancestor, alpha, beta, cmp)
        else:
            both = []
        if both:
            alpha = self._fill_digests(self.alpha, alpha, both)
            beta = self._fill_digests(self.beta, beta, both)

        plan: Plan | None = None
        if not two_way and not beta:
            # nothing to compare with: every mirror entry is new (NewTreePlan: the same
            # reconciliation and plan, in half the time, or already built)
            built = self._ahead.take(alpha, len(sa.entries)) if self._ahead is not None else None
            if built is None:
                built = NewTreePlan()
                built.add(alpha.items())
            rec, plan = built.finish(alpha)
        else:
            rec = reconcile(
                ancestor, alpha, beta,
                Mode.TWO_WAY if two_way else Mode.ONE_WAY_REPLICA,
                cmp,
                policy=Policy(self.pair.conflict),
                decisions=decisions,
                stamp=time.strftime("%Y%m%d-%H%M%S"),
            )
        for c in rec.conflicts:
            self.reporter.conflict(self.job, c)
        halts = check_guards(
            rec, alpha, beta,
            alpha_root_exists=sa.root_exists,
            max_delete_percent=self.pair.max_delete,
            two_way=two_way,
            ancestor_count=len(ancestor) + sum(hidden.values()) if two_way else 0,
            hidden=sum(hidden.values()),
            mirror_label=self.alpha.description,
            target_label=self.beta.description,
        )
        if plan is None:
            plan = make_plan(rec)
        res.plan = plan
        res.conflicts = [c for c in rec.conflicts if c.unresolved]
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
        if two_way and plan.operations:
            self.alpha.ensure_root()
        self._clean_temps(self.beta, sb.temp_files)
        if two_way:
            self._clean_temps(self.alpha, sa.temp_files)

        trash = None
        if self.pair.trash:
            trash = Trash(new_run_id(), self.pair_key, self.job, self.state)
            if self.state is not None:
                purge_expired(self.state, self.pair_key, {ALPHA: self.alpha, BETA: self.beta},
                              self.pair.trash_days)
        keep_summaries = mirror_summaries and sa.root_exists  # (one-way, with a state folder)
        can_summarize = self.alpha.capabilities.summaries and self.beta.capabilities.summaries
        listed_summaries: Future[dict[RelPath, str]] | None = None
        if keep_summaries and can_summarize and plan.operations:
            # they depend on the mirror's listing alone: worked out while the plan runs,
            # in the time this thread waits for the helpers
            listed_summaries = in_background(snapshot_summaries, sa.entries, hidden, name="summaries")
        ex = Executor(self.alpha, self.beta, self.reporter, self.job, self.stop, trash).run(plan)
        res.applied = ex.applied
        res.applied.conflicts = len(rec.conflicts)
        res.problems.extend(ex.problems)
        if two_way and self.state is not None:
            self._record(stored, rec, ex.failed_paths, frozen, hidden, migrate=summaries is None)
        elif keep_summaries and self.state is not None:
            if can_summarize:
                listed = (
                    listed_summaries.result() if listed_summaries is not None
                    else snapshot_summaries(sa.entries, skip=hidden)
                )
                self._record_summaries(listed, hidden, summaries or {}, frozen)
            elif summaries:  # (a side that cannot leave directories out would have them all relisted)
                self.state.save_mirror_summaries(self.pair_key, {})
        if ex.error:
            raise ConnectError(ex.error)
        if ex.stopped:
            res.outcome = PARTIAL
            res.error = "stopped before the plan was complete"
        elif res.problems:
            res.outcome = PARTIAL
        elif res.conflicts:
            res.outcome = CONFLICTS
            res.error = f"{len(res.conflicts)} conflict(s) left for review: srsync conflicts {self.job}"
        else:
            res.outcome = NOTHING if plan.empty else OK

    def _relist_one_sided(self, rules: IgnoreRules, sa: ScanResult, sb: ScanResult) -> None:
        """List in full, on its side, each directory a one-way scan left out on one side only.

        Quiet on both sides means the same files and links on both; quiet on
        one side only, that side's must be compared with the other's.
        """
        alone = [[d for d in res.quiet if d not in other.quiet] for res, other in ((sa, sb), (sb, sa))]
        for res, ep, dirs in ((sa, self.alpha, alone[0]), (sb, self.beta, alone[1])):
            if not dirs:
                continue
            got = ep.relist(rules, dirs)
            for d in dirs:
                del res.quiet[d]
            res.entries.update(got.entries)
            res.problems.extend(got.problems)
            res.ignore_files.update(got.ignore_files)
            res.temp_files.extend(t for t in got.temp_files if t not in res.temp_files)

    def _record_summaries(
        self, out: dict[RelPath, str], hidden: dict[RelPath, int], old: dict[RelPath, str], frozen: set[str]
    ) -> None:
        """Store the mirror's directory summaries, as listed this run (``out``: from
        ``snapshot_summaries`` skipping ``hidden``), for the next one-way scan.

        A directory left out on both sides keeps its summary.  One holding or
        under a path frozen this run gets none, so that it is listed, and its
        problem reported, every time.
        """
        assert self.state is not None
        for d in hidden:
            if (kept := old.get(d)) is not None:
                out[d] = kept
        if frozen:
            parents = {parent(p) for p in frozen}
            out = {d: s for d, s in out.items() if d not in parents and not under_any(d, frozen)}
        if out != old:
            self.state.save_mirror_summaries(self.pair_key, out)

    def _record(
        self, stored: Snapshot, rec: Reconciliation, failed: set[str], frozen: set[str],
        hidden: dict[RelPath, int], migrate: bool,
    ) -> None:
        """Fold what was verifiably applied into the ancestor and save it atomically.

        The files and links of ``hidden`` directories were not loaded: they stay
        as stored.  ``migrate`` rewrites an unchanged ancestor too (one stored
        without directory summaries gets them).
        """
        assert self.state is not None
        keep = set(frozen) | set(rec.unresolved)
        new = next_ancestor(stored, rec.final, failed, keep)
        if new != stored or migrate or not self.state.has_ancestor(self.pair_key):
            self.state.save_ancestor(self.pair_key, self.job, new, hidden)
        self.state.set_conflicts(self.pair_key, self.job, [
            (c.path, c.reason, _describe_entry(c.alpha), _describe_entry(c.beta))
            for c in rec.conflicts if c.unresolved
        ])
        applied = [p for p in self.state.decisions(self.pair_key) if p not in failed]
        if applied:
            self.state.clear_decisions(self.pair_key, applied)

    def _case_collisions(
        self, alpha: Snapshot, beta: Snapshot, two_way: bool, problems: list[Problem]
    ) -> set[str]:
        """Names a case-insensitive side cannot hold apart: refused, never merged."""
        a_ci = self.alpha.capabilities.case_insensitive
        b_ci = self.beta.capabilities.case_insensitive
        if not (b_ci or (two_way and a_ci)):
            return set()
        if two_way:
            found = case_collisions(alpha.keys() | beta.keys())
        else:
            found = case_collisions(alpha.keys())
        for path in sorted(found):
            problems.append(Problem(
                path, "differs from another name only in letter case, which the "
                f"{'target' if b_ci else 'mirror'} cannot tell apart; skipped", "mirror"))
        return found

    @staticmethod
    def _clean_temps(ep: Endpoint, temps: list[str]) -> None:
        for tmp in temps:  # leftovers of an interrupted run of this job
            with contextlib.suppress(OSError):
                ep.remove(tmp, Kind.FILE)


def _describe_entry(e: Entry | None) -> str:
    if e is None:
        return "absent"
    if e.kind is Kind.FILE:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.mtime_ns / 1e9))
        return f"file, {e.size} bytes, modified {when}"
    if e.kind is Kind.LINK:
        return f"symlink to {e.target}"
    return "directory"

