"""Profile one srsync run of a bench case (cProfile in every thread), print the top functions."""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import runpy
import shutil
import sys
import threading
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))


def child(out: str, argv: list[str]) -> int:
    """Run ``python -m srsync ARGV`` in this process with a profiler in each thread.

    cProfile only sees the thread that enabled it; srsync scans both sides in worker
    threads and paramiko reads packets in its own, so every thread gets a profiler
    and the stats are merged.  Merged cumulative times add up concurrent threads.
    """
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        with lock:
            profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]

    def exit_with_stats(code: int) -> None:
        # srsync ends with os._exit (no interpreter teardown); here the stats come first
        raise SystemExit(code)

    os._exit = exit_with_stats  # type: ignore[assignment]
    main = cProfile.Profile()
    sys.argv = ["srsync", *argv]
    code = 0
    main.enable()
    try:
        runpy.run_module("srsync", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        main.disable()
    stats = pstats.Stats(main)
    with lock:
        for prof in profiles:
            stats.add(prof)
    stats.dump_stats(out)
    return code


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:])

    from measure import run_measured
    from run import Bench, parse_args
    from trees import apply_edit, copy_tree, ensure_dataset

    p = argparse.ArgumentParser(prog="bench/prof.py", description=__doc__)
    p.add_argument("--case", default="b", choices=list("abcde"))
    p.add_argument("--direction", default="push", choices=["push", "pull", "two-way"],
                   help="two-way: One2One with the local side as mirror (the data set, untouched: the "
                   "remote side starts empty)")
    p.add_argument("--phase", default="cold", choices=["cold", "nochange", "edit"])
    p.add_argument("--size-scale", type=float, default=1.0)
    p.add_argument("--rtt-ms", type=float, default=0.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="/tmp/srsync-bench.prof")
    args = p.parse_args()

    bench = Bench(parse_args(["--size-scale", str(args.size_scale), "--cases", args.case]))
    spec = bench.specs[args.case]
    if args.phase == "edit" and not spec.edit:
        p.error(f"case {args.case} has no edit phase")
    try:
        bench.start_server()
        bench.begin_pass(args.rtt_ms)
        pristine = ensure_dataset(spec, bench.cache)
        base = bench.run_dir / "prof"
        base.mkdir(parents=True, exist_ok=True)
        src = pristine
        if spec.edit:
            src = base / "src"
            copy_tree(pristine, src)
        dst, state = base / "dst", base / "state"
        argv = bench.srsync_argv(args.direction, src, dst, "bench-prof", args.direction == "two-way")
        env = bench.env(state)
        if args.phase != "cold":  # bring the target up to date first, unprofiled
            run_measured(argv, env, bench.log, bench.args.timeout)
            if args.phase == "edit":
                apply_edit(spec, src)
        prof_argv = [sys.executable, str(Path(__file__).resolve()), "--child", args.out, "--", *argv[3:]]
        m = run_measured(prof_argv, env, bench.log, bench.args.timeout)
        print(f"profiled srsync {args.case} {args.direction} {args.phase}: exit {m.exit_code}, "
              f"{m.wall_s:.2f} s wall (with profiler), {m.cpu_s:.2f} s cpu; stats in {args.out}")
        if m.exit_code:
            print(m.tail)
        stats = pstats.Stats(args.out)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        shutil.rmtree(base, ignore_errors=True)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
