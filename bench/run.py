"""The proxy's benchmark: strangler vs the raw ASGI + aiohttp forwarder (bench/raw_forwarder.py)
vs nginx (when installed), one interleaved run, same upstream, loopback only.

Workloads: small GET, 64 KiB GET and 4 KiB POST, each `wrk -t1 -c64 -d{seconds}s --latency` per
target per round, targets rotated every round; `paced` is the small GET with 50 ms of think time
per connection (about 1,200 req/s offered, under every proxy's saturation), for the latency a
feature adds at a load the proxy can carry rather than at its limit. strangler runs as users
run it: a routes.yaml with routes, header rules, limits, the JSON access log (to a file) and
metrics on. Reports req/s, p50/p99, proxy CPU µs per request (from /proc/PID/stat) and peak RSS
(VmHWM), and each target's ratio to the raw forwarder in the same round.

    make bench                      # python -m bench.run --rounds 3 --seconds 10
    python -m bench.run --rounds 1 --seconds 5 --workloads small
    python -m bench.run --workloads small,paced --targets strangler,strangler+shadow20,\
        strangler+shadow100,raw-aiohttp        # what shadow copies cost the primary
    python -m bench.run --workloads small --targets strangler,strangler+access,\
        strangler+access-redis                 # what key auth + access + rate limit cost
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, children, cpu_seconds, wait_port

UPSTREAM_PORT, RAW_PORT, PROXY_PORT, NGINX_PORT, NETS_PORT, BASE_PORT = range(18181, 18187)
SHADOW20_PORT, SHADOW100_PORT = 18187, 18188
ACCESS_PORT, ACCESS_REDIS_PORT = 18189, 18190
AIOHTTP_PORT = 18191
WORKLOADS = {  # path, POST body size, think time (ms) per request and connection
    "small": ("/small", None, 0),
    "big": ("/big", None, 0),
    "post": ("/post", 4096, 0),
    "paced": ("/small", None, 50),
}

NGINX_UPSTREAM = """
worker_processes 1; daemon off; pid {dir}/up.pid; error_log {dir}/up.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000000; keepalive_timeout 75s;
  client_body_buffer_size 64k;
  server {{
    listen 127.0.0.1:{port};
    location = /small {{ default_type application/json;
      return 200 '{{"id":1,"name":"Aurora Phone Pro","price":"499.00","in_stock":true}}'; }}
    location = /big {{ alias {dir}/big.bin; }}
    location = /post {{ default_type application/json; proxy_pass http://127.0.0.1:{port}/ok; }}
    location = /ok {{ return 200 '{{"ok":true}}'; }}
  }}
}}
"""
NGINX_PROXY = """
worker_processes 1; daemon off; pid {dir}/px.pid; error_log {dir}/px.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000000;
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                  proxy_buffering on; }} }}
}}
"""
ROUTES = """version: 1
upstreams:
  monolith: {{url: "http://127.0.0.1:{up}", timeout: 30s}}
  payment: {{url: "http://127.0.0.1:{up}", timeout: 5s}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments, methods: [GET, POST]}}
    split: {{monolith: 90, payment: 10}}
    sticky: header:X-User-Id
  - name: orders
    match: {{path: /api/v1/orders}}
    to: monolith
  - name: small
    match: {{path: /small}}
    to: monolith
  - name: big
    match: {{path: /big}}
    to: monolith
  - name: post
    match: {{path: /post, methods: [POST]}}
    to: payment
    max_body: 1MiB
"""
# The same table with every safety net on: outlier ejection on both upstreams, and a retry
# policy and a fallback on every route (the `strangler+nets` target).
NETS = {
    "timeout: 30s}}": "timeout: 30s, outlier: on}}",
    "timeout: 5s}}": "timeout: 5s, outlier: on, idempotent_writes: true}}",
    "    to: monolith\n": "    to: monolith\n    retry: {{attempts: 2}}\n    fallback: payment\n",
    "    to: payment\n": "    to: payment\n    retry: {{attempts: 2}}\n    fallback: monolith\n",
}


def with_nets(table: str) -> str:
    for old, new in NETS.items():
        table = table.replace(old, new)
    return table


def with_shadow(table: str, sample: float) -> str:
    """Every GET route's safe requests copied to a third upstream (the same server), compared
    (the `strangler+shadowN` targets)."""
    mirror = '  mirror: {{url: "http://127.0.0.1:{up}", timeout: 5s}}\ndefault:'
    table = table.replace("default:", mirror, 1)
    for name in ("small", "big"):
        route = f"    match: {{{{path: /{name}}}}}\n    to: monolith\n"
        table = table.replace(route, route + f"    shadow: {{{{to: mirror, sample: {sample}}}}}\n")
    return table


# Every benchmarked route guarded: an API key looked up, an access rule checked, a rate limit
# counted (too high to refuse) — the `strangler+access` target (and `+access-redis`, the limit
# counted in a local Redis as replicas share it).
ACCESS = "    access: {{groups: [bench]}}\n    rate_limit: {{rate: 999999999/minute}}\n"
ACCESS_HEADER = "X-API-Key"


def with_access(table: str) -> str:
    for route in ("    to: monolith\n", "    to: payment\n    max_body: 1MiB\n"):
        table = table.replace(route, route + ACCESS)
    return table


def bench_key(work: Path) -> str:
    """A consumer in the `bench` group, in the targets' consumer file: its key."""
    command = [str(Path(sys.executable).parent / "strangler"), "consumers", "add", "bench"]
    command += ["--group", "bench", "--reason", "benchmark", "--consumers"]
    out = subprocess.run(
        [*command, str(work / "consumers.json")], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"\bsk_[A-Za-z0-9_-]+", out)
    assert found is not None, out
    return found[0]


def peak_rss_mib(pid: int) -> float:
    peak = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
    return peak / 1024


@dataclass
class Target:
    name: str
    port: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None

    def start(self, logdir: Path) -> None:
        log = open(logdir / f"{self.name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=self.cwd,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def wrk(
    port: int, workload: str, seconds: int, script_dir: Path, header: str | None = None
) -> dict[str, float]:
    path, body, think = WORKLOADS[workload]
    args = ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if header is not None:
        args += ["-H", header]
    if body:
        script = script_dir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = string.rep("x", {body})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
        args += ["-s", str(script)]
    elif think:
        script = script_dir / "paced.lua"
        script.write_text(f"function delay()\n  return {think}\nend\n")
        args += ["-s", str(script)]
    out = subprocess.run(
        [*args, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout

    def latency(pct: str) -> float:
        found = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not found:
            return float("nan")
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(found.group(1))
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(x) for x in found.groups())
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": rps,
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": errors,
        "requests": requests,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workloads", default="small,big,post")
    parser.add_argument(
        "--targets",
        help="comma-separated subset of: strangler, strangler+aiohttp (the upstream client the "
        "proxy's own HTTP/1.1 one replaced), strangler+nets, strangler+shadow20, "
        "strangler+shadow100, strangler+access, strangler+access-redis, raw-aiohttp, nginx "
        "(default: strangler, strangler+nets, raw-aiohttp, nginx)",
    )
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/15",
        help="the Redis strangler+access-redis counts its rate limit in",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit, run as one more target (strangler@base) for an A/B",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx")
    if nginx is None:
        print(
            "bench: nginx not installed: the upstream and the nginx target are skipped",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="strangler-bench-"))
    work.chmod(0o755)  # nginx's workers run as another user and must read big.bin
    (work / "big.bin").write_bytes(os.urandom(65_536))
    (work / "big.bin").chmod(0o644)
    (work / "up.conf").write_text(NGINX_UPSTREAM.format(dir=work, port=UPSTREAM_PORT))
    (work / "px.conf").write_text(NGINX_PROXY.format(dir=work, port=NGINX_PORT, up=UPSTREAM_PORT))
    (work / "routes.yaml").write_text(ROUTES.format(up=UPSTREAM_PORT))
    (work / "routes-nets.yaml").write_text(with_nets(ROUTES).format(up=UPSTREAM_PORT))
    (work / "routes-access.yaml").write_text(with_access(ROUTES).format(up=UPSTREAM_PORT))
    for sample in (20, 100):
        shadowed = with_shadow(ROUTES, sample / 100).format(up=UPSTREAM_PORT)
        (work / f"routes-shadow{sample}.yaml").write_text(shadowed)
    python = sys.executable
    upstream = Target(
        "upstream", UPSTREAM_PORT, [nginx, "-c", str(work / "up.conf"), "-p", str(work)]
    )

    def strangler(name: str, port: int, table: str) -> Target:
        command = [str(Path(python).parent / "strangler"), "serve", "--routes", str(work / table)]
        listeners = ["--listen", f"127.0.0.1:{port}", "--internal-listen", "off"]
        return Target(name, port, [*command, *listeners, "--admin-listen", "127.0.0.1:0"])

    access = strangler("strangler+access", ACCESS_PORT, "routes-access.yaml")
    access.env = {"STRANGLER_CONSUMERS": str(work / "consumers.json")}
    shared = strangler("strangler+access-redis", ACCESS_REDIS_PORT, "routes-access.yaml")
    shared.env = {**access.env, "STRANGLER_RATE_LIMIT_STORE": args.redis}
    on_aiohttp = strangler("strangler+aiohttp", AIOHTTP_PORT, "routes.yaml")
    on_aiohttp.env = {"STRANGLER_UPSTREAM_CLIENT": "aiohttp"}
    targets = [
        strangler("strangler", PROXY_PORT, "routes.yaml"),
        on_aiohttp,
        access,
        shared,
        strangler("strangler+nets", NETS_PORT, "routes-nets.yaml"),
        strangler("strangler+shadow20", SHADOW20_PORT, "routes-shadow20.yaml"),
        strangler("strangler+shadow100", SHADOW100_PORT, "routes-shadow100.yaml"),
        Target(
            "raw-aiohttp",
            RAW_PORT,
            [
                python,
                "-m",
                "uvicorn",
                "bench.raw_forwarder:app",
                "--port",
                str(RAW_PORT),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                "--no-server-header",
                "--no-date-header",
            ],
            env={"BENCH_UPSTREAM": f"http://127.0.0.1:{UPSTREAM_PORT}"},
        ),
        Target("nginx", NGINX_PORT, [nginx, "-c", str(work / "px.conf"), "-p", str(work)]),
    ]
    chosen = (args.targets or "strangler,strangler+nets,raw-aiohttp,nginx").split(",")
    targets = [t for t in targets if t.name in chosen]
    if args.baseline is not None:
        base = strangler("strangler@base", BASE_PORT, "routes.yaml")
        base.command = [python, "-m", "proxy", *base.command[1:]]
        base.cwd = args.baseline.resolve()  # `python -m` puts the working directory first
        targets.append(base)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    headers: dict[str, str] = {}
    if any(t.name.startswith("strangler+access") for t in targets):
        key = bench_key(work)
        headers = {t.name: f"{ACCESS_HEADER}: {key}" for t in (access, shared)}
    try:
        upstream.start(work)
        for target in targets:
            target.start(work)
        for workload in args.workloads.split(","):
            for target in targets:  # warm-up, not recorded
                wrk(target.port, workload, 2, work, headers.get(target.name))
            for round_no in range(args.rounds):
                order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
                for target in order:
                    assert target.proc is not None
                    pid = target.proc.pid
                    before = cpu_seconds(pid, descendants=True)
                    run = wrk(target.port, workload, args.seconds, work, headers.get(target.name))
                    used = cpu_seconds(pid, descendants=True) - before
                    run["cpu_us"] = used / run["requests"] * 1e6
                    run["round"] = round_no
                    results.setdefault((workload, target.name), []).append(run)
                    time.sleep(1)
        rss = {t.name: peak_rss_mib(t.proc.pid) for t in targets if t.proc}
    finally:
        for target in [*targets, upstream]:
            target.stop()
    report = render(results, rss, args)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.md").write_text(report)
    (args.out / f"{stamp}.json").write_text(
        json.dumps({f"{w}/{t}": runs for (w, t), runs in results.items()}, indent=1)
    )
    print(report)
    return 0


def render(
    results: dict[tuple[str, str], list[dict[str, float]]],
    rss: dict[str, float],
    args: argparse.Namespace,
) -> str:
    lines = [
        f"rounds {args.rounds} x {args.seconds}s, wrk -t1 -c64, one worker each, loopback",
        "",
        "| workload | target | req/s | x raw (same round) | p50 ms | p99 ms | errors |"
        " CPU µs/req | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in args.workloads.split(","):
        raw_by_round = {r["round"]: r["rps"] for r in results.get((workload, "raw-aiohttp"), [])}
        for name in (
            "strangler",
            "strangler+aiohttp",
            "strangler+nets",
            "strangler+shadow20",
            "strangler+shadow100",
            "strangler+access",
            "strangler+access-redis",
            "strangler@base",
            "raw-aiohttp",
            "nginx",
        ):
            runs = results.get((workload, name), [])
            if not runs:
                continue
            ratios = [
                r["rps"] / raw_by_round[r["round"]] for r in runs if r["round"] in raw_by_round
            ]
            med = statistics.median
            lines.append(
                f"| {workload} | {name} | {med(r['rps'] for r in runs):,.0f} | "
                f"{med(ratios):.2f} | {med(r['p50'] for r in runs):.2f} | "
                f"{med(r['p99'] for r in runs):.2f} | {sum(r['errors'] for r in runs):.0f} | "
                f"{med(r['cpu_us'] for r in runs):,.0f} | {rss.get(name, 0):.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
