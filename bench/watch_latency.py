"""Watch latency: local save -> remote updated, through a real daemon and a throwaway sshd.

Usage: python bench/watch_latency.py [--edits 50] [--json]
Exit code 1 when the median exceeds 1 s (the target of issue 5).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from sshd import SSHD, find_sshd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    binary = find_sshd()
    if binary is None:
        print("watch_latency: OpenSSH sshd not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="srsync-bench-") as tmp_s:
        tmp = Path(tmp_s)
        server = SSHD(workdir=tmp / "sshd", sshd_bin=binary)
        server.start()
        daemon: subprocess.Popen[bytes] | None = None
        try:
            (tmp / "m").mkdir()
            (tmp / "m/file.txt").write_text("start")
            (tmp / "remote").mkdir()
            conf = tmp / "conf"
            conf.mkdir()
            (conf / "global.toml").write_text(
                f'known_hosts = "{server.known_hosts}"\nssh_config = "{server.ssh_config}"\n'
                f'use_agent = false\nkey = "{server.key_path}"\nuser = "{server.user}"\n'
                f"port = {server.port}\n")
            (conf / "bench.toml").write_text(
                f'watch = true\n\n[[targets]]\nhost = "{server.host}"\n  [[targets.paths]]\n'
                f'  mirror = "{tmp / "m"}"\n  target = "{tmp / "remote"}"\n')
            env = dict(os.environ, SRSYNC_STATE_DIR=str(tmp / "state"), HOME=str(tmp),
                      PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            daemon = subprocess.Popen(
                [sys.executable, "-m", "srsync", "autorun", "--daemon", "--conf-dir", str(conf), "-q"],
                env=env, cwd=tmp)
            target = tmp / "remote/file.txt"
            deadline = time.monotonic() + 30
            while not (target.exists() and target.read_text() == "start"):
                if time.monotonic() > deadline:
                    raise SystemExit("initial sync did not happen within 30 s")
                time.sleep(0.02)
            samples: list[float] = []
            for i in range(args.edits):
                time.sleep(0.2)  # separate edits, so each one is its own burst
                content = f"edit {i} {time.time()}"
                t0 = time.monotonic()
                (tmp / "m/file.txt").write_text(content)
                while True:
                    try:
                        if target.read_text() == content:
                            break
                    except OSError:
                        pass
                    if time.monotonic() - t0 > 20:
                        raise SystemExit(f"edit {i} did not arrive within 20 s")
                    time.sleep(0.005)
                samples.append(time.monotonic() - t0)
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=20)
            server.stop()
    samples.sort()
    result = {
        "edits": len(samples),
        "median_s": round(statistics.median(samples), 3),
        "p90_s": round(samples[int(0.9 * (len(samples) - 1))], 3),
        "min_s": round(samples[0], 3),
        "max_s": round(samples[-1], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"watch latency over {result['edits']} edits: median {result['median_s']:.3f} s, "
              f"p90 {result['p90_s']:.3f} s, min {result['min_s']:.3f} s, max {result['max_s']:.3f} s")
    return 0 if result["median_s"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
