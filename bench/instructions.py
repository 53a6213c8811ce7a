"""Instructions per request: the proxy's user-space cost of a request, counted exactly.

CPU time per request on a shared 2-core machine moves by ±15 % from run to run, more than most
single changes to the request path are worth, so a change measured that way is guessed at, not
measured. Here each target runs under Valgrind's callgrind (instrumentation off until warm), is
sent exactly `--requests` requests over `--connections` keep-alive connections, and the
instructions it executed meanwhile are divided by the requests: the same commit gives the same
count within ~0.2 %, so a change worth 1 % shows. It counts what the process runs in user space
(Python, uvloop, llhttp, libc), not the kernel's share of its system calls, and not time: a
cache-hostile change can cost more than its count says. Confirm the big ones with `bench.run`.

Targets are bench.run's (`strangler`, `strangler+nets`, `strangler+access`; the same routes
file, access log and metrics on) and `--baseline DIR` adds a checkout of another commit
(`git worktree add DIR REV`) as `strangler@base`, for an A/B:

    python -m bench.instructions                              # small, big and post; ~2 minutes
    python -m bench.instructions --workloads small --baseline /tmp/base
    python -m bench.instructions --annotate small            # plus callgrind's function list
    python -m bench.instructions --workloads small --serve-arg=--no-access-log   # a feature's cost

It needs valgrind and nginx (`apt-get install valgrind nginx-light`). Every request's status is
checked (200) and its body read whole: a target that answers anything else fails the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import bounded, wait_port
from bench.run import (
    ACCESS_HEADER,
    NGINX_UPSTREAM,
    ROUTES,
    UPSTREAM_PORT,
    WORKLOADS,
    Target,
    bench_key,
    with_access,
    with_nets,
)

PORT = 18195  # the target under valgrind
START_SECONDS = 180.0  # a proxy under valgrind starts ~50 times slower
WARM_REQUESTS = 300
TABLES = {
    "strangler": "routes.yaml",
    "strangler+nets": "routes-nets.yaml",
    "strangler+access": "routes-access.yaml",
}


def request_bytes(workload: str, header: str | None) -> bytes:
    path, body, _think = WORKLOADS[workload]
    lines = [f"{'POST' if body else 'GET'} {path} HTTP/1.1", "Host: bench", "User-Agent: bench"]
    if header is not None:
        lines.append(header)
    if body:
        lines += [f"Content-Length: {body}", "Content-Type: application/json"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + b"a" * (body or 0)


def drive(port: int, request: bytes, total: int, connections: int) -> None:
    """`total` requests over `connections` keep-alive connections, one at a time on each; an
    answer that is not a 200 with a Content-Length raises."""
    failures: list[str] = []

    def one_connection(count: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                reader = sock.makefile("rb")
                for _ in range(count):
                    sock.sendall(request)
                    status = reader.readline()
                    length = None
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if b" 200 " not in status or length is None:
                        raise RuntimeError(f"answer {status!r} (Content-Length {length})")
                    reader.read(length)
        except Exception as exc:  # any failure fails the run: the count would be per fewer
            failures.append(f"{type(exc).__name__}: {exc}")

    share, extra = divmod(total, connections)
    threads = [
        threading.Thread(target=one_connection, args=(share + (i < extra),))
        for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} connection(s) failed: {failures[0]}")


def callgrind(pid: int, *commands: str) -> None:
    for command in commands:
        subprocess.run(["callgrind_control", command, str(pid)], capture_output=True, check=True)


def instructions(dump: Path) -> int:
    """The instruction count of one callgrind dump (its `summary:` line)."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{dump} has no summary")


def measure(target: Target, work: Path, request: bytes, args: argparse.Namespace) -> Path:
    """Start `target` under callgrind, warm it, count `args.requests` requests: the dump."""
    out = work / f"cg-{target.name}-{time.monotonic_ns()}"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += [f"--callgrind-out-file={out}.%p", *target.command]
    log = open(work / f"{target.name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        command,
        env={**os.environ, **target.env},
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=target.cwd,
    )
    target.proc = proc
    try:
        wait_port(target.port, START_SECONDS, proc)
        drive(target.port, request, WARM_REQUESTS, args.connections)
        callgrind(proc.pid, "--instr=on")
        drive(target.port, request, args.requests, args.connections)
        callgrind(proc.pid, "--dump")
    finally:
        target.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):  # the next target takes the port
            proc.wait(timeout=60)
        log.close()
    dumps = sorted(work.glob(f"{out.name}.{proc.pid}.*"))  # the --dump's, not the exit's
    if not dumps:
        raise RuntimeError(f"{target.name}: callgrind wrote no dump (see {work})")
    return dumps[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=bounded(100, 1_000_000, int), default=2000)
    parser.add_argument("--connections", type=bounded(1, 64, int), default=8)
    parser.add_argument("--workloads", default="small,big,post")
    parser.add_argument("--targets", default="strangler", help=", ".join(TABLES))
    parser.add_argument("--baseline", type=Path, help="a checkout of another commit, for an A/B")
    parser.add_argument("--annotate", metavar="WORKLOAD", help="print callgrind's top functions")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `strangler serve` argument for the targets (repeat), e.g. "
        "--serve-arg=--no-access-log: what a feature costs",
    )
    args = parser.parse_args()
    nginx = shutil.which("nginx")
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench.instructions: {tool} is needed (apt-get install valgrind nginx-light)")
            return 2
    assert nginx is not None
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS] + [
        t for t in args.targets.split(",") if t not in TABLES
    ]
    if unknown:
        parser.error(f"unknown workload or target: {', '.join(unknown)}")
    if args.annotate and args.annotate not in workloads:
        parser.error(f"--annotate {args.annotate}: not one of --workloads")
    work = Path(tempfile.mkdtemp(prefix="strangler-instructions-"))
    work.chmod(0o755)  # nginx's workers run as another user and must read big.bin
    (work / "big.bin").write_bytes(os.urandom(65_536))
    (work / "big.bin").chmod(0o644)
    (work / "up.conf").write_text(NGINX_UPSTREAM.format(dir=work, port=UPSTREAM_PORT))
    (work / "routes.yaml").write_text(ROUTES.format(up=UPSTREAM_PORT))
    (work / "routes-nets.yaml").write_text(with_nets(ROUTES).format(up=UPSTREAM_PORT))
    (work / "routes-access.yaml").write_text(with_access(ROUTES).format(up=UPSTREAM_PORT))
    python = sys.executable
    names = args.targets.split(",")
    key = f"{ACCESS_HEADER}: {bench_key(work)}" if "strangler+access" in names else None
    headers: dict[str, str | None] = {}  # each target's credential field, if its routes ask one
    targets = []
    for name in names:
        command = [python, str(Path(python).parent / "strangler"), "serve"]
        command += ["--routes", str(work / TABLES[name]), "--listen", f"127.0.0.1:{PORT}"]
        command += ["--internal-listen", "off", "--admin-listen", "127.0.0.1:0", *args.serve_arg]
        target = Target(name, PORT, command)
        headers[name] = key if name == "strangler+access" else None
        if name == "strangler+access":
            target.env = {"STRANGLER_CONSUMERS": str(work / "consumers.json")}
        targets.append(target)
    if args.baseline is not None:
        base = Target("strangler@base", PORT, [*targets[0].command])
        base.command[1:2] = ["-m", "proxy"]  # the baseline's own code: `python -m` from its root
        base.cwd = args.baseline.resolve()
        base.env = targets[0].env
        headers[base.name] = headers[targets[0].name]
        targets.append(base)
    upstream = Target(
        "upstream", UPSTREAM_PORT, [nginx, "-c", str(work / "up.conf"), "-p", str(work)]
    )
    counts: dict[tuple[str, str], float] = {}
    dumps: dict[tuple[str, str], Path] = {}
    try:
        upstream.start(work)
        for workload in workloads:
            for target in targets:
                request = request_bytes(workload, headers[target.name])
                dump = measure(target, work, request, args)
                dumps[workload, target.name] = dump
                counts[workload, target.name] = instructions(dump) / args.requests
                first = counts[workload, targets[0].name]
                print(
                    f"{workload:6s} {target.name:18s} {counts[workload, target.name]:>10,.0f}"
                    f" instructions per request  x{counts[workload, target.name] / first:.3f}",
                    flush=True,
                )
    finally:
        upstream.stop()
    if args.annotate:
        dump = dumps[args.annotate, targets[0].name]
        listing = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", str(dump)], capture_output=True, text=True
        ).stdout
        print("\n".join(listing.splitlines()[:60]))
    print(f"(dumps in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
