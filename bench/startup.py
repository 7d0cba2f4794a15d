"""Start-up time and memory of ``businessos serve`` on the embedded servers, cold and warm.

Each run launches ``businessos serve`` with DATABASE_URL and REDIS_URL unset and measures the
wall time from launch to the first 200 on ``/health``:

* cold: an empty data directory (initdb of the embedded PostgreSQL, migrations, a new Redis);
* warm: a data directory that has been served from before.

Cold and warm runs alternate, so both see the same machine. After the first warm run is healthy
and the job worker is up, the resident memory of the process tree is sampled: the serve process
(which hosts uvicorn and the API) and its children (the job worker), the embedded PostgreSQL
(postmaster and its backends) and the embedded redis-server, each separately.

    python bench/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HEALTH_TIMEOUT = 120.0
WORKER_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command() -> list[str]:
    """``businessos`` from this interpreter's environment, else the module behind it."""
    script = Path(sys.executable).with_name("businessos")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kernel.cli"]


def _env(data_dir: Path) -> dict[str, str]:
    drop = ("DATABASE_URL", "DATABASE_APP_URL", "REDIS_URL", "BUSINESSOS_DATA_DIR", "BUSINESSOS_SECRET_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["BUSINESSOS_DATA_DIR"] = str(data_dir)
    return env


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@dataclass
class Memory:
    processes: int
    rss: int
    pss: int


def _measure(processes: list[psutil.Process]) -> Memory:
    rss = pss = count = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.AccessDenied:
            info = process.memory_info()
        except psutil.NoSuchProcess:
            continue
        count += 1
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return Memory(count, rss, pss)


def _postgres(data_dir: Path) -> list[psutil.Process]:
    pidfile = data_dir / "postgres" / "postmaster.pid"
    try:
        postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return []


def _redis(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cwd"]):
        if "redis" in (process.info["name"] or "") and (process.info["cwd"] or "").startswith(str(data_dir)):
            found.append(process)
    return found


@dataclass
class Run:
    seconds: float
    stop_seconds: float
    memory: dict[str, Memory] | None


def serve_once(data_dir: Path, log: Path, *, sample_memory: bool) -> Run:
    port = _free_port()
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*_command(), "serve", "--port", str(port)],
            cwd=data_dir.parent,
            env=_env(data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            while not _healthy(port):
                if proc.poll() is not None:
                    raise SystemExit(f"serve exited with {proc.returncode}; see {log}")
                if time.perf_counter() - started > HEALTH_TIMEOUT:
                    raise SystemExit(f"/health not 200 after {HEALTH_TIMEOUT:.0f} s; see {log}")
                time.sleep(0.01)
            seconds = time.perf_counter() - started
            memory = None
            if sample_memory:
                deadline = time.perf_counter() + WORKER_TIMEOUT
                while b"worker ready" not in log.read_bytes() and time.perf_counter() < deadline:
                    time.sleep(0.1)
                serve = psutil.Process(proc.pid)
                memory = {
                    "serve (API)": _measure([serve]),
                    "serve children (job worker)": _measure(serve.children(recursive=True)),
                    "postgres": _measure(_postgres(data_dir)),
                    "redis-server": _measure(_redis(data_dir)),
                }
            stopping = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            return Run(seconds, time.perf_counter() - stopping, memory)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _mb(value: int) -> str:
    return f"{value / 2**20:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="cold and warm runs each (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directories")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bos-bench-startup-"))
    warm_dir = root / "warm" / "data"
    warm_dir.parent.mkdir(parents=True)
    print(f"command: {' '.join(_command())} serve   (data under {root})")
    try:
        # Prepare the warm data directory once; this run is not counted.
        serve_once(warm_dir, root / "warm" / "prepare.log", sample_memory=False)
        cold: list[Run] = []
        warm: list[Run] = []
        memory = None
        for i in range(args.runs):
            cold_dir = root / f"cold-{i}" / "data"
            cold_dir.parent.mkdir(parents=True)
            cold.append(serve_once(cold_dir, cold_dir.parent / "serve.log", sample_memory=False))
            warm.append(serve_once(warm_dir, root / "warm" / f"serve-{i}.log", sample_memory=memory is None))
            memory = memory or warm[-1].memory
            print(f"run {i + 1}/{args.runs}: cold {cold[-1].seconds:6.2f} s   warm {warm[-1].seconds:6.2f} s")

        cold_median = statistics.median(r.seconds for r in cold)
        warm_median = statistics.median(r.seconds for r in warm)
        print()
        print(f"launch -> first 200 on /health, median of {args.runs} (cold and warm alternating):")
        print(f"  cold (empty data dir: initdb + migrations)  {cold_median:6.2f} s")
        print(f"  warm (existing data dir)                    {warm_median:6.2f} s")
        print(f"  cold / warm                                 {cold_median / warm_median:6.2f}x")
        stop_median = statistics.median(r.stop_seconds for r in [*cold, *warm])
        print(f"  SIGTERM -> exit (everything stopped)        {stop_median:6.2f} s")
        if memory:
            print()
            print("memory once healthy and the job worker is up (warm start), MiB:")
            print(f"  {'component':<30} {'procs':>5} {'RSS':>8} {'PSS':>8}")
            for name, m in memory.items():
                print(f"  {name:<30} {m.processes:>5} {_mb(m.rss)} {_mb(m.pss)}")
            total_rss = sum(m.rss for m in memory.values())
            total_pss = sum(m.pss for m in memory.values())
            print(f"  {'total':<30} {'':>5} {_mb(total_rss)} {_mb(total_pss)}")
            print("  (RSS counts shared pages once per process; PSS splits them between the sharers)")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
