"""srsync vs rsync (and unison) benchmark: data sets, own sshd, delay proxy, table and JSON."""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import shlex
import shutil
import site
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from measure import run_measured  # noqa: E402
from proxy import DelayProxy  # noqa: E402
from server import BenchSSHD  # noqa: E402
from trees import CaseSpec, apply_edit, case_specs, copy_tree, ensure_dataset, same_tree, tree_bytes  # noqa: E402

QUICK_SCALE = 0.02
DIRECTIONS = ("push", "pull")


@dataclass(slots=True)
class Run:
    """One measured client run, as written to the JSON file."""

    rtt_ms: float
    case: str
    direction: str  # push | pull | two-way
    phase: str  # cold | nochange | edit
    tool: str  # srsync | rsync | unison
    rep: int
    exit_code: int
    wall_s: float
    cpu_s: float
    maxrss_kib: int
    wire_up: int | None  # client -> server bytes through the proxy (None: not counted)
    wire_down: int | None
    ok: bool
    note: str = ""
    rss_source: str = ""
    load1: float = 0.0  # 1-minute load average just before the run: other work on the machine
    argv: list[str] = field(default_factory=list)

    @property
    def wire(self) -> int | None:
        if self.wire_up is None or self.wire_down is None:
            return None
        return self.wire_up + self.wire_down


class Bench:
    """Owns the work directory, the sshd, the proxy of the current pass and the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir)
        self.cache = self.work / "data"
        self.run_dir = self.work / f"run-{os.getpid()}"
        self.log = self.run_dir / "clients.log"
        self.specs = case_specs(args.size_scale)
        self.runs: list[Run] = []
        self.sshd: BenchSSHD | None = None
        self.proxy: DelayProxy | None = None
        self.port = 0
        self.rtt = 0.0
        self.conf_dir = self.run_dir / "conf"
        self.code_path = REPO
        self.python = sys.executable  # what runs srsync (see prepare_interpreter)
        self.helper_python: str | None = None  # with --python: what runs the helpers too

    # ---- setup -----------------------------------------------------------
    def snapshot_srsync(self) -> str:
        """Copy the srsync package to the run dir and run every srsync from that copy.

        Others may edit the working tree during a long run; a snapshot keeps all
        runs of one bench on the same code.  Returns a digest of the copied sources.
        """
        src = Path(self.args.srsync_from) / "srsync"
        if not (src / "__main__.py").exists():
            raise SystemExit(f"{src} is not an srsync package (no __main__.py)")
        dst = self.run_dir / "srsync-snapshot" / "srsync"
        shutil.rmtree(dst.parent, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.code_path = dst.parent
        # byte-compile the copy as pip does on install (this environment may set
        # PYTHONDONTWRITEBYTECODE, and then every run would recompile srsync)
        compileall.compile_dir(str(dst), quiet=1)
        digest = hashlib.sha256()
        for path in sorted(dst.rglob("*.py")):
            digest.update(str(path.relative_to(dst)).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:16]

    def prepare_interpreter(self) -> dict[str, Any]:
        """Choose the interpreter srsync runs under; returns what the JSON records of it.

        By default a bare venv of this interpreter (``--without-pip``: no download)
        whose site-packages holds one ``.pth`` naming this interpreter's
        site-packages directories: the same Python and the same packages, imported
        from the same files, as with a pipx or venv install.  Plain directory lines
        in a ``.pth`` are only added to ``sys.path``; the ``.pth`` files inside them
        are not run, so start-up hooks that this machine's system site-packages
        carry for other programs (here a sandbox hook that imports certifi in every
        Python process) are not charged to srsync.  ``--system-python`` runs
        srsync under this interpreter as it is, hooks included.
        """
        base = self.args.python or sys.executable
        if self.args.system_python:
            self.python = sys.executable
        else:
            venv = self.run_dir / "venv"
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
            python = venv / "bin" / "python3"
            purelib = subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
            dirs = [d for d in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(d)]
            (Path(purelib) / "srsync-bench-deps.pth").write_text("".join(d + "\n" for d in dirs))
            if self.args.python:
                # the helpers run this venv's python too, started with -S: no .pth is
                # read then, so their one optional package is linked in directly
                import xxhash

                (Path(purelib) / "xxhash").symlink_to(Path(xxhash.__file__).parent, target_is_directory=True)
                self.helper_python = str(python)
            self.python = str(python)
        return {
            "python": self.python,
            "base": base,
            "helper": self.helper_python or "python3 (the server's PATH)",
            "mode": "system" if self.args.system_python else "venv",
            "start_ms": {"this_interpreter": _start_ms(sys.executable), "srsync_runs_under": _start_ms(self.python)},
        }

    def start_server(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.sshd = BenchSSHD(self.run_dir / "sshd", self.run_dir / "unison-remote")
        self.sshd.start()
        say(f"sshd pid {self.sshd.pid} on 127.0.0.1:{self.sshd.port}")

    def begin_pass(self, rtt_ms: float) -> None:
        """Route clients for the next cases: through a proxy with ``rtt_ms``, or direct."""
        assert self.sshd is not None
        self.end_pass()
        self.rtt = rtt_ms
        if rtt_ms == 0 and self.args.direct:
            self.port = self.sshd.port
            say("loopback pass: clients connect to sshd directly (no byte counts)")
        else:
            self.proxy = DelayProxy(self.sshd.port, rtt_ms)
            self.proxy.start()
            self.port = self.proxy.port
            what = f"{rtt_ms:g} ms round trip ({rtt_ms / 2:g} ms each way)" if rtt_ms else "0 ms delay, byte counter only"
            say(f"pass at {rtt_ms:g} ms: clients go through the proxy on 127.0.0.1:{self.port}, {what}")
        self.sshd.allow_ports(sorted({self.sshd.port, self.port}))
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "global.toml").write_text(self.sshd.srsync_global_toml(self.port))

    def end_pass(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def close(self) -> None:
        self.end_pass()
        if self.sshd is not None:
            say(f"stopping sshd pid {self.sshd.pid}")
            self.sshd.stop()
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ---- client command lines ---------------------------------------------
    def env(self, state: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        env["PYTHONPATH"] = str(self.code_path) + os.pathsep + env.get("PYTHONPATH", "")
        if state is not None:
            env["SRSYNC_STATE_DIR"] = str(state)
        env["UNISON"] = str(self.run_dir / "unison-local")
        if self.helper_python:
            env["SRSYNC_HELPER"] = self.helper_python
        return env

    def srsync_argv(self, direction: str, src: Path, dst: Path, name: str, two_way: bool = False) -> list[str]:
        assert self.sshd is not None
        argv = [
            self.python, "-m", "srsync", "manual", "--conf-dir", str(self.conf_dir), "-N", name,
            "-H", self.sshd.host, "--remote", "target" if direction in ("push", "two-way") else "mirror",
            "-M", str(src), "-T", str(dst),
        ]
        if two_way:
            argv += ["--sync-type", "One2One"]
        return argv

    def rsync_argv(self, direction: str, src: Path, dst: Path) -> list[str]:
        assert self.sshd is not None
        remote = f"{self.sshd.user}@{self.sshd.host}:"
        ssh = shlex.join(self.sshd.ssh_command(self.port))
        if direction == "push":
            return ["rsync", "-a", "--delete", "-e", ssh, f"{src}/", f"{remote}{dst}/"]
        return ["rsync", "-a", "--delete", "-e", ssh, f"{remote}{src}/", f"{dst}/"]

    def unison_argv(self, local: Path, remote: Path) -> list[str]:
        assert self.sshd is not None
        sshargs = " ".join(self.sshd.ssh_command(self.port)[1:])
        return [
            "unison", str(local), f"ssh://{self.sshd.user}@{self.sshd.host}/{remote}",
            "-batch", "-auto", "-times", "-ui", "text", "-sshargs", sshargs,
        ]

    # ---- one measured run -------------------------------------------------
    def measure(
        self, argv: list[str], env: dict[str, str], *, case: str, direction: str, phase: str,
        tool: str, rep: int, check: tuple[Path, Path, bool] | None,
    ) -> Run:
        before = self.proxy.snapshot() if self.proxy else None
        load1 = os.getloadavg()[0]
        m = run_measured(argv, env, self.log, self.args.timeout)
        up = down = None
        if self.proxy is not None and before is not None:
            self.proxy.wait_idle()
            after = self.proxy.snapshot()
            up, down = after[0] - before[0], after[1] - before[1]
        note = ""
        ok = m.exit_code == 0 and not m.timed_out
        if m.timed_out:
            note = f"timeout after {self.args.timeout:g}s"
        elif m.exit_code != 0:
            last = m.tail.splitlines()[-1].strip() if m.tail else ""
            note = f"exit {m.exit_code}: {last[:90]}"
        elif check is not None:
            problem = same_tree(*check)
            if problem:
                ok = False
                note = f"MISMATCH: {problem}"
        run = Run(
            rtt_ms=self.rtt, case=case, direction=direction, phase=phase, tool=tool, rep=rep,
            exit_code=m.exit_code, wall_s=round(m.wall_s, 4), cpu_s=round(m.cpu_s, 3),
            maxrss_kib=m.maxrss_kib, wire_up=up, wire_down=down, ok=ok, note=note, argv=argv,
            rss_source=m.rss_source, load1=round(load1, 2),
        )
        self.runs.append(run)
        wire = f"{(up or 0) + (down or 0):>13,} B" if up is not None else "-"
        status = "ok" if ok else note
        say(
            f"  {case} {direction:<7} {phase:<8} {tool:<6} rep{rep} {m.wall_s:8.2f} s  "
            f"cpu {m.cpu_s:6.2f} s  rss {m.maxrss_kib / 1024:7.1f} MiB  wire {wire}  load {load1:.1f}  {status}"
        )
        return run

    # ---- cases ------------------------------------------------------------
    def warm_memory(self, where: Path, spec: CaseSpec) -> None:
        """Write and delete a file a tenth bigger than the case's file next to its trees.

        Every rebuild of (d)/(e) creates a new file as big as the old one.  On this
        VM class new tmpfs pages cost 0.4 s a GiB when the memory was freed a moment
        ago and 1.1-1.8 s when it was not (the host faults them in), so without this
        the tool that runs second in a phase would rebuild into the memory the first
        one freed (rsync frees its old file; srsync keeps it in its trash).  Both
        tools now start from recently freed memory.  Trees on disk: nothing to do.
        """
        if not str(self.work).startswith("/dev/shm"):
            return
        scratch = where / "warm.tmp"
        piece = b"\0" * (8 << 20)
        try:
            with open(scratch, "wb") as f:
                for _ in range(0, spec.max_size * 11 // 10, len(piece)):
                    f.write(piece)
        finally:
            scratch.unlink(missing_ok=True)

    def one_way_case(self, spec: CaseSpec) -> None:
        pristine = ensure_dataset(spec, self.cache)
        base = self.run_dir / f"case-{spec.name}"
        content = bool(spec.edit)
        # the 1M-file memory check runs push only (a pull would hold a second million files)
        directions = ("push",) if spec.name == "m" else DIRECTIONS
        for d_index, direction in enumerate(directions):
            for rep in range(self.args.repeat):
                shutil.rmtree(base, ignore_errors=True)
                base.mkdir(parents=True)
                if spec.edit:
                    src = base / "src"
                    copy_tree(pristine, src)
                else:
                    src = pristine  # read-only for both tools
                dst = {"srsync": base / "dst-srsync", "rsync": base / "dst-rsync"}
                state = base / "srsync-state"
                name = f"bench-{spec.name}-{direction}"
                for p_index, phase in enumerate(spec.phases):
                    if phase == "edit":
                        apply_edit(spec, src)
                    order = ["srsync", "rsync"]
                    if (p_index + d_index + rep) % 2:
                        order.reverse()
                    if spec.name == "m":
                        # srsync's memory check only: a third copy of a million files
                        # exhausts tmpfs inodes (rsync then fails with exit 23)
                        order = ["srsync"]
                    for tool in order:
                        if tool == "srsync":
                            argv = self.srsync_argv(direction, src, dst[tool], name)
                            env = self.env(state)
                        else:
                            argv = self.rsync_argv(direction, src, dst[tool])
                            env = self.env()
                        if phase == "edit":
                            self.warm_memory(base, spec)
                        self.measure(
                            argv, env, case=spec.name, direction=direction, phase=phase, tool=tool,
                            rep=rep, check=(src, dst[tool], content),
                        )
                shutil.rmtree(base, ignore_errors=True)

    def two_way_case(self, spec: CaseSpec) -> None:
        """One2One srsync vs unison: cold (remote replica empty), then no change."""
        pristine = ensure_dataset(spec, self.cache)
        base = self.run_dir / f"twoway-{spec.name}"
        for rep in range(self.args.repeat):
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            shutil.rmtree(self.run_dir / "unison-local", ignore_errors=True)
            shutil.rmtree(self.run_dir / "unison-remote", ignore_errors=True)
            (self.run_dir / "unison-remote").mkdir()
            local = {"srsync": base / "local-srsync", "unison": base / "local-unison"}
            remote = {"srsync": base / "remote-srsync", "unison": base / "remote-unison"}
            for tool in local:
                copy_tree(pristine, local[tool])
                remote[tool].mkdir()
            state = base / "srsync-state"
            for p_index, phase in enumerate(("cold", "nochange")):
                order = ["srsync", "unison"] if (p_index + rep) % 2 == 0 else ["unison", "srsync"]
                for tool in order:
                    if tool == "srsync":
                        argv = self.srsync_argv("two-way", local[tool], remote[tool], f"bench-2way-{spec.name}", True)
                        env = self.env(state)
                    else:
                        argv = self.unison_argv(local[tool], remote[tool])
                        env = self.env()
                    self.measure(
                        argv, env, case=spec.name, direction="two-way", phase=phase, tool=tool,
                        rep=rep, check=(local[tool], remote[tool], False),
                    )
            shutil.rmtree(base, ignore_errors=True)


# ---- output ------------------------------------------------------------------

def say(text: str) -> None:
    print(text, flush=True)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if n < 10 * size else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(slots=True)
class Cell:
    """The runs of one tool in one (rtt, case, direction, phase) group, summarised."""

    runs: list[Run]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def wall(self) -> float:
        return _median([r.wall_s for r in self.runs])

    @property
    def wire(self) -> float | None:
        wires = [r.wire for r in self.runs]
        if not wires or any(w is None for w in wires):
            return None
        return _median([float(w or 0) for w in wires])

    def time_text(self) -> str:
        if not self.runs:
            return "-"
        if not self.ok:
            bad = next(r for r in self.runs if not r.ok)
            return f"n/a ({bad.note})"
        return f"{self.wall:.2f}"

    def rss_text(self) -> str:
        return f"{max(r.maxrss_kib for r in self.runs) / 1024:.0f}" if self.runs else "-"

    def cpu_text(self) -> str:
        return f"{_median([r.cpu_s for r in self.runs]):.2f}" if self.runs else "-"


def _ratio(a: Cell, b: Cell) -> str:
    if not (a.ok and b.ok) or b.wall <= 0:
        return "n/a"
    return f"{a.wall / b.wall:.2f}"


def print_table(runs: list[Run], specs: dict[str, CaseSpec], sizes: dict[str, int]) -> str:
    """Markdown table of medians per group; returns the text it printed."""
    groups: dict[tuple[float, str, str, str], dict[str, list[Run]]] = {}
    for r in runs:
        groups.setdefault((r.rtt_ms, r.case, r.direction, r.phase), {}).setdefault(r.tool, []).append(r)
    lines = [
        "| rtt | case | dir | phase | srsync s | other s | ratio | srsync wire | other wire | srsync RSS MiB | other RSS MiB | srsync cpu s | other cpu s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (rtt, case, direction, phase), tools in groups.items():
        s = Cell(tools.get("srsync", []))
        other_name = "unison" if direction == "two-way" else "rsync"
        o = Cell(tools.get(other_name, []))
        wire_s = _fmt_bytes(s.wire)
        if phase == "edit" and s.wire is not None and sizes.get(case):
            wire_s += f" ({100 * s.wire / sizes[case]:.2f}% of file)"
        wire_o = _fmt_bytes(o.wire)
        if phase == "edit" and o.wire is not None and sizes.get(case):
            wire_o += f" ({100 * o.wire / sizes[case]:.2f}%)"
        lines.append(
            f"| {rtt:g} ms | {case} | {direction} | {phase} | {s.time_text()} | "
            f"{other_name} {o.time_text()} | {_ratio(s, o)} | {wire_s} | {wire_o} | "
            f"{s.rss_text()} | {o.rss_text()} | {s.cpu_text()} | {o.cpu_text()} |"
        )
    text = "\n".join(lines)
    say(text)
    say("")
    for name in sorted({r.case for r in runs}):
        say(f"  ({name}) {specs[name].title}: {_fmt_bytes(sizes.get(name, 0))} of file data")
    return text


def _start_ms(python: str, runs: int = 15) -> float:
    """Median milliseconds for ``python -c pass``: the interpreter's own start, hooks included."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _versions(checkout: Path) -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for name, argv in (
        ("rsync", ["rsync", "--version"]),
        ("unison", ["unison", "-version"]),
        ("ssh", ["ssh", "-V"]),
    ):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            out[name] = (p.stdout or p.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            out[name] = "unavailable"
    try:
        rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "srsync"],
                               capture_output=True, text=True)
        out["srsync"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        out["srsync"] = "unknown"
    return out


# ---- command line ------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark srsync against rsync -a (and unison for two-way) over a local sshd.",
    )
    p.add_argument("--cases", default=None, help="comma list of a,b,c,d,e, or m (1M files, push only, not in the default set) (default: a-e; --quick: all, tiny; '' with --two-way: two-way only)")
    p.add_argument("--rtt-ms", type=float, default=None,
                   help="round trip of the delayed pass through the proxy (default 20)")
    p.add_argument("--loopback-only", action="store_true", help="skip the delayed pass; loopback only")
    p.add_argument("--no-loopback", action="store_true", help="skip the loopback pass; delayed pass only")
    p.add_argument("--size-scale", type=float, default=None,
                   help="multiply sizes and file counts (default 1.0; --quick: 0.02)")
    p.add_argument("--two-way", action="store_true", help="also srsync One2One vs unison on case (c)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: all cases at scale 0.02, two-way included, loopback only unless --rtt-ms")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool and phase; the table shows medians")
    p.add_argument("--direct", action="store_true",
                   help="loopback pass without the proxy (purest timing, no byte counts)")
    p.add_argument("--on-disk", action="store_true", help="keep trees under /var/tmp instead of /dev/shm (tmpfs)")
    p.add_argument("--workdir", default=None, help="where data and trees live (overrides --on-disk)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before one client run is killed")
    p.add_argument("--srsync-from", default=str(REPO),
                   help="checkout whose srsync/ package is benchmarked (copied at start; default: this repo)")
    p.add_argument("--system-python", action="store_true",
                   help="run srsync under this interpreter as it is, with every start-up hook of its "
                   "site-packages (default: a bare venv reaching the same packages, as a pipx install)")
    p.add_argument("--python", default=None, metavar="PATH",
                   help="run srsync and its helpers under a venv of this interpreter instead (same X.Y "
                   "as this one: the venv reaches this interpreter's packages), e.g. the system's "
                   "/usr/bin/python3 where this one is an unoptimised build")
    p.add_argument("--keep", action="store_true", help="keep this run's sshd dir and client log")
    p.add_argument("--clean", action="store_true", help="delete the cached data sets at the end")
    args = p.parse_args(argv)
    if args.workdir is None:
        args.workdir = "/var/tmp/srsync-bench" if args.on_disk else "/dev/shm/srsync-bench"
    if args.size_scale is None:
        args.size_scale = QUICK_SCALE if args.quick else 1.0
    if args.cases is None:
        args.cases = "a,b,c,d,e"
    if args.quick:
        args.two_way = True
        if args.rtt_ms is None:
            args.loopback_only = True
    if args.rtt_ms is None:
        args.rtt_ms = 20.0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in "abcdem" or len(c) != 1]
    if bad:
        p.error(f"unknown case(s): {', '.join(bad)}; choose from a,b,c,d,e (and m: 1M files, push only)")
    if not cases and not args.two_way:
        p.error("no cases given (an empty --cases only makes sense with --two-way)")
    args.case_list = cases
    if args.loopback_only and args.no_loopback:
        p.error("--loopback-only and --no-loopback exclude each other")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.python:
        if args.system_python:
            p.error("--python and --system-python exclude each other")
        try:
            found = subprocess.run([args.python, "-c", "import sys; print(sys.version_info[:2])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as exc:
            p.error(f"--python {args.python}: cannot run it ({exc})")
        if found != str(sys.version_info[:2]):
            p.error(f"--python {args.python} is python {found}, this one {sys.version_info[:2]}: "
                    "the venv reuses this interpreter's packages, so the versions must match")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    tmpfs = args.workdir.startswith("/dev/shm")
    say(
        f"srsync bench: cases {','.join(args.case_list)}, size scale {args.size_scale:g}, "
        f"repeat {args.repeat}, trees in {args.workdir} "
        f"({'tmpfs: measures the protocol, not the disk' if tmpfs else 'on disk: disk speed and noise included'})"
    )
    passes = [0.0] if args.loopback_only else [0.0, float(args.rtt_ms)]
    if args.no_loopback:
        passes = [p for p in passes if p > 0] or [float(args.rtt_ms)]
    sizes: dict[str, int] = {}
    started = time.time()
    table = ""
    code_digest = ""
    interpreter: dict[str, Any] = {}
    try:
        for name in args.case_list:
            spec = bench.specs[name]
            t0 = time.perf_counter()
            root = ensure_dataset(spec, bench.cache)
            sizes[name] = tree_bytes(root)
            say(f"data ({name}): {spec.title} -> {spec.files} files, {_fmt_bytes(sizes[name])} ({time.perf_counter() - t0:.1f} s)")
        if args.two_way:
            spec = bench.specs["c"]
            sizes["c"] = tree_bytes(ensure_dataset(spec, bench.cache))
        bench.run_dir.mkdir(parents=True, exist_ok=True)
        code_digest = bench.snapshot_srsync()
        say(f"srsync from {args.srsync_from} (snapshot {code_digest} of its srsync/ sources)")
        interpreter = bench.prepare_interpreter()
        starts = interpreter["start_ms"]
        say(f"srsync runs under {interpreter['python']} ({interpreter['mode']}); 'python -c pass' takes "
            f"{starts['srsync_runs_under']:.1f} ms there, {starts['this_interpreter']:.1f} ms under {sys.executable}")
        say(f"srsync's helpers run under {interpreter['helper']}")
        bench.start_server()
        for rtt in passes:
            bench.begin_pass(rtt)
            for name in args.case_list:
                say(f"case ({name}) at {rtt:g} ms: {bench.specs[name].title}")
                bench.one_way_case(bench.specs[name])
            if args.two_way:
                say(f"two-way on (c) at {rtt:g} ms: srsync One2One vs unison")
                bench.two_way_case(bench.specs["c"])
        say("")
        say(f"results (median of {args.repeat}; wall seconds; ratio = srsync / other; "
            f"wire = bytes both ways through the proxy; RSS = client peak)")
        table = print_table(bench.runs, bench.specs, sizes)
    finally:
        bench.close()
        if args.clean:
            shutil.rmtree(bench.cache, ignore_errors=True)
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    out = results / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    payload: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "args": {k: v for k, v in vars(args).items()},
        "tmpfs": tmpfs,
        "byte_counting": "direct (none)" if args.direct else "delay proxy on 127.0.0.1 (TCP payload bytes, both ways)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {**_versions(Path(args.srsync_from)), "srsync_sources_sha256_16": code_digest},
        "interpreter": interpreter,
        "case_bytes": sizes,
        "runs": [asdict(r) for r in bench.runs],
        "table_markdown": table,
    }
    out.write_text(json.dumps(payload, indent=2))
    say(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if all(r.ok or r.tool == "srsync" for r in bench.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
