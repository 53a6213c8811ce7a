"""Every command in the README works as written (or as its stated equivalent).

Each line of each ```sh block is classified; a command this test does not know how to check fails
the test, so new README commands must come with a check.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.procs import Child
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def as_run_here(command: str) -> list[str]:
    """The command with `.venv/bin/` pointing at the interpreter running the tests."""
    args = shlex.split(command)
    if args[0].startswith(".venv/bin/"):
        args[0] = str(BIN / args[0].removeprefix(".venv/bin/"))
    return args


def test_readme_opens_with_the_two_setup_commands() -> None:
    assert readme_commands()[:2] == ["make demo", "make test"]


def test_every_make_target_in_the_readme_exists() -> None:
    targets = {c.split()[1] for c in readme_commands() if c.startswith("make ")}
    assert targets >= {"demo", "test", "lint", "bench"}
    for target in targets:
        dry = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert dry.returncode == 0, dry.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def monolith(workdir: Path) -> Iterator[Child]:
    """The README's seed and serve commands, run as written in a directory of their own (the
    port becomes 0: 8001 may be taken on the machine running the tests)."""
    commands = [c for c in readme_commands() if "-m legacy_monolith" in c]
    seed, serve = commands[0], commands[1]
    assert seed.endswith("legacy_monolith seed")
    code, output = Child("seed", as_run_here(seed), cwd=str(workdir)).run_to_end()
    assert code == 0, output
    assert "500 payments" in output
    args = [("0" if a == "8001" else a) for a in as_run_here(serve)]
    assert "0" in args
    with Child("monolith", args, cwd=str(workdir)) as child:
        yield child


def test_every_legacy_monolith_command_runs(monolith: Child, workdir: Path) -> None:
    for command in readme_commands():
        if "-m legacy_monolith seed --database-url" in command:
            args = [a.replace("100000", "2000") for a in as_run_here(command)]  # same path, smaller
            code, output = Child("seed", args, cwd=str(workdir)).run_to_end()
            assert code == 0, output
            assert (workdir / "var" / "big.db").exists()


def test_every_curl_command_answers(monolith: Child) -> None:
    curls = [c for c in readme_commands() if c.startswith("curl ")]
    assert curls
    if shutil.which("curl") is None:
        if IN_CI:
            pytest.fail("curl is needed to check the README's curl commands")
        pytest.skip("curl is not installed")
    answers = []
    for command in curls:
        done = subprocess.run(
            ["bash", "-c", command.replace("http://127.0.0.1:8001", monolith.url)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
        answers.append(done.stdout)
    assert '"items"' in answers[0]
    assert '"access_token"' in answers[1]
    assert "/unauthorized" in answers[2]


def test_every_readme_command_is_checked() -> None:
    known = (
        re.compile(r"^make (demo|test|lint)$"),
        re.compile(r"^\.venv/bin/python -m legacy_monolith "),
        re.compile(r"^curl "),
        re.compile(r"^\.venv/bin/strangler routes (validate|show) routes\.yaml$"),
        re.compile(r"^\.venv/bin/strangler serve "),
        re.compile(r"^make bench$"),
        re.compile(r"^\.venv/bin/strangler routes (flip|diff|history|rollback) "),
        re.compile(r"^\.venv/bin/strangler routes history$"),
        re.compile(r"^\.venv/bin/strangler routes status --admin "),
        re.compile(r"^\.venv/bin/python -m services\.payment --port 8002 "),
        re.compile(r"^\.venv/bin/python -m services\.catalog --port 8003$"),
        re.compile(
            r"^\.venv/bin/strangler sync (check|backfill|follow|reconcile|status|to-legacy)"
        ),
        re.compile(r"^\.venv/bin/strangler (shadow report|record|contract run) "),
        re.compile(r"^\.venv/bin/strangler static export "),
    )
    unchecked = [c for c in readme_commands() if not any(k.search(c) for k in known)]
    assert unchecked == [], "add a check for these README commands"


def test_the_static_export_command_runs_against_the_readme_monolith(
    monolith: Child, workdir: Path
) -> None:
    """`strangler static export` as the README writes it (the monolith's URL made the running
    one's), in the README's directory: the catalog's images exported and verified."""
    (export,) = [c for c in readme_commands() if " static export " in c]
    args = [monolith.url if a == "http://127.0.0.1:8001" else a for a in as_run_here(export)]
    done = subprocess.run(
        args, cwd=workdir, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "verified" in done.stdout
    assert any(p.is_file() for p in (workdir / "static").rglob("*"))


def test_routes_commands_run_on_the_repository_table() -> None:
    commands = [c for c in readme_commands() if re.search(r" routes (validate|show) ", c)]
    assert len(commands) == 2
    for command in commands:
        done = subprocess.run(
            as_run_here(command), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
    assert (
        "valid (version"
        in subprocess.run(
            as_run_here(commands[0]), cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    )


def test_the_life_cycle_commands_run_in_order(tmp_path: Path) -> None:
    """On a copy of the repository's routes.yaml, in the README's order."""
    shutil.copy(ROOT / "routes.yaml", tmp_path / "routes.yaml")
    life_cycle = [
        c
        for c in readme_commands()
        if re.match(r"^\.venv/bin/strangler routes (flip|diff|history|rollback)", c)
        and "--store" not in c
    ]
    assert len(life_cycle) == 4
    outputs = []
    for command in life_cycle:
        done = subprocess.run(
            as_run_here(command),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "STRANGLER_AUTHOR": "readme"},
        )
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    assert "version 2 committed (readme: canary 10%)" in outputs[0]
    assert "changed route payments" in outputs[1]
    assert [line.split()[0] for line in outputs[2].splitlines()] == ["2", "1"]
    assert "version 3 committed (readme: rollback to version 1: error rate up)" in outputs[3]
    assert "split" not in (tmp_path / "routes.yaml").read_text().split("name: payments")[1]


def test_the_shadow_record_and_contract_commands_run(monolith: Child, tmp_path: Path) -> None:
    """The repository's table served in front of the README's monolith (its shadow pointed at
    the monolith too, every read copied): `shadow report` counts comparisons, `record` keeps
    pairs of real traffic without the token, and `contract run` replays them as written."""
    import json

    import httpx

    from proxy.procs import STRANGLER_READY

    commands = [c for c in readme_commands() if re.search(r" (shadow report|record|contract) ", c)]
    assert len(commands) == 3
    report, record, replay = commands
    table = (
        (ROOT / "routes.yaml")
        .read_text()
        .replace("http://127.0.0.1:8001", monolith.url)
        .replace("http://127.0.0.1:8002", monolith.url)
        .replace("sample: 0.2", "sample: 1.0")
    )
    (tmp_path / "routes.yaml").write_text(table)
    serve = [str(BIN / "strangler"), "serve", "--routes", "routes.yaml"]
    serve += [
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "off",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    with Child("proxy", serve, cwd=str(tmp_path), ready=STRANGLER_READY) as proxy:
        login = httpx.post(
            f"{proxy.url}/api/v1/auth/login",
            json={"email": "alice@example.com", "password": "password123"},
        )
        token = login.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        recording = subprocess.Popen(
            [*as_run_here(record.replace("--count 200", "--count 3")), "--timeout", "30s"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 40
        while recording.poll() is None and time.monotonic() < deadline:
            assert httpx.get(f"{proxy.url}/api/v1/payments", headers=auth).status_code == 200
            time.sleep(0.1)
        output = recording.communicate(timeout=10)[0]
        assert recording.returncode == 0, output
        assert "recorded 3 pairs of payments to payments-corpus.jsonl" in output
        corpus = (tmp_path / "payments-corpus.jsonl").read_text()
        assert token not in corpus
        time.sleep(1.5)  # the workers share their numbers once a second
        shown = subprocess.run(
            as_run_here(report), cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"payments: [1-9]\d* compared, 0\.0 % differ", shown.stdout)
    args = [
        a.replace("http://127.0.0.1:8002", monolith.url).replace("$TEST_USER_TOKEN", token)
        for a in as_run_here(replay)
    ]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert (result["replayed"], result["differing"], result["passed"]) == (3, 0, True)


def test_serve_commands_proxy_to_the_monolith(monolith: Child, tmp_path: Path) -> None:
    """Each `strangler serve` line, pointed at this test's monolith and at free ports."""
    import httpx

    from proxy.procs import STRANGLER_READY

    table = (ROOT / "routes.yaml").read_text().replace("http://127.0.0.1:8001", monolith.url)
    (tmp_path / "routes.yaml").write_text(table)
    serves = [c for c in readme_commands() if " serve " in c and "--store" not in c]
    assert len(serves) == 2
    direct = httpx.get(f"{monolith.url}/api/v1/categories")
    for command in serves:
        args = [
            a.replace("http://127.0.0.1:8001", monolith.url).replace(
                "127.0.0.1:8080", "127.0.0.1:0"
            )
            for a in as_run_here(command)
        ]
        if "--listen" not in args:
            args += ["--listen", "127.0.0.1:0"]
        args += ["--internal-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        with Child("proxy", args, cwd=str(tmp_path), ready=STRANGLER_READY) as proxy:
            through = httpx.get(f"{proxy.url}/api/v1/categories")
            assert through.status_code == 200
            assert through.content == direct.content


def test_strangler_demo_plays_day_zero(tmp_path: Path) -> None:
    """`make demo` is `strangler demo` after the install step; run that part here."""
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [str(BIN / "strangler"), "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "monolith listening on http://127.0.0.1:" in out
    assert "← 304" in out
    assert "← 402 application/problem+json" in out
    assert '"status": "paid"' in out
    assert "← 422 application/problem+json" in out
    # act 2: the proxy in front, transparent, refusing what it must
    assert "routes[0].split: weights sum to 110, not 100" in out
    assert out.count("same status, headers and bytes as the monolith's own answer: True") == 3
    for refused in ("400", "405", "508", "413"):
        assert f"← {refused} application/problem+json" in out
    assert 'strangler_requests_total{code="200",route="default",upstream="monolith"} 3.0' in out
    # act 3: the service's data: declared, backfilled, followed, reconciled
    assert "sync payments (" in out
    assert "payments.yaml): valid" in out
    assert re.search(r"backfill done: 50\d rows", out)
    assert "the gate of upstream 'payment' (routes payments) is closed (503)" in out
    assert re.search(r"is in the service's database \d+\.\ds later", out)
    assert "the service answers with the monolith's payment, field for field: True" in out
    payment_data = out[: out.index("Before any user is served by it")]
    assert payment_data.count("reconcile passed: drift 0") == 2
    assert "cutover gate │ ready" in out
    # act 4: see before serving: shadow, report, a recorded contract, a forced canary user
    start, end = out.index("Before any user is served by it"), out.index("moment before the flip")
    shadow = out[start:end]
    assert "version 2 committed (platform-team: shadow payment reads)" in shadow
    first, _, fixed = shadow.partition("The service's team fixes the data")
    assert re.search(r"payments: \d+ compared, \d+\.\d % differ", first)
    assert "$.currency" in first
    assert 'candidate: "usd"' in first
    assert "recorded 4 pairs of payments to" in first
    assert "contract: 4 replayed, 100.0 % differ (threshold 0.0 %): failed" in first
    assert "Bearer" not in (tmp_path / "demo" / "payments-corpus.jsonl").read_text()
    assert re.search(r"payments: \d+ compared, 0\.0 % differ \(0\)", fixed)
    assert "contract: 4 replayed, 0.0 % differ (threshold 0.0 %): passed" in fixed
    assert 'strangler_overrides_total{route="payments",upstream="payment"} 1.0' in fixed
    # act 5: the payments route flipped to the service, a pinned user, its payment synced back
    assert 'strangler_pinned_total{route="payments",upstream="monolith"} 1.0' in out
    assert '"id": 4000000000000000' in out
    assert "1 applied" in out
    assert re.search(r"order \d+ status: paid", out)
    # the cancel race: a service payment on an order the monolith cancelled, compensated
    assert "compensate: sagas started 1 by watched (swept); calls 1 done" in out
    assert re.search(r"compensate\s+│ 0 open \(1 done\)", out)
    # and the flip diffed, listed and rolled back, served live
    assert "version 3 committed (platform-team: payment service live)" in out
    assert "changed route payments: to: monolith → payment" in out
    assert "version 4 committed (platform-team: rollback to version 2: error rate up)" in out
    assert "(the proxy now serves version 4, without a restart)" in out
    assert 'strangler_requests_total{code="401",route="payments",upstream="payment"} 1.0' in out
    assert 'strangler_requests_total{code="401",route="payments",upstream="monolith"} 1.0' in out
    # her tablet's live channel: a WebSocket tunnelled to the service, open through the rollback
    live = out[out.index("watches that payment on a live channel") : out.index("with safety nets")]
    assert "← 101 Switching Protocols" in live
    assert "first message: payment 4000000000000000 captured" in live
    assert "ping answered through the tunnel" in live
    tunnels = 'strangler_tunnels_total{result="tunnelled",route="payment-live",upstream="payment"}'
    assert f"{tunnels} 1.0" in live
    assert "removed route payment-live" not in out
    # act 6: the payment service goes down; reads fall back, a POST gets a fast 503, it comes back
    outage = out[out.index("this time with safety nets") :]
    assert "version 5 committed (platform-team: payment service live, with fallback)" in outage
    assert "strangler-fallback: payment; reason=connect-failure" in outage
    assert "← 200 application/json; strangler-fallback: payment; reason=ejected" in outage
    assert re.search(r"← 503 application/problem\+json; retry-after: \d", outage)
    assert '"type": "urn:strangler:problem:upstream-ejected"' in outage
    assert re.search(r"payment\s+ejected \(\ds left here\)\s+1 ejections", outage)
    back = outage[outage.index("it is back by itself") : outage.index("Static files leave")]
    assert back.count("← 200 application/json\n") == 1  # no fallback: the service answered
    assert "← 201 application/json" in back
    assert re.search(r"payment\s+closed\s+1 ejections", back)
    # act 7: static files exported from the monolith, verified, served by the proxy
    static = out[out.index("Static files leave the monolith first") :]
    assert re.search(r"(\d+) files exported to \S+, \1 verified, 0 problems", static)
    assert "version 6 committed (platform-team: static files served by the proxy)" in static
    assert "cache-control: public, max-age=86400" in static
    assert re.search(r"← 304 ; ETag \"[0-9a-f]+-[0-9a-f]+\"", static)
    assert re.search(r"content-range: bytes 0-15/\d+", static)
    assert 'strangler_requests_total{code="206",route="static",upstream="static"} 1.0' in static
    # act 8: the catalog's read side: declared syncs (one refreshed), gate, shadow, canary, moved
    rollouts = out.index("Evidence drives the move")
    catalog = out[out.index("The second service: the catalog's read side") : rollouts]
    assert "categories (key id, no change column: full refresh)" in catalog
    assert re.search(r"backfill done: 1\d rows", catalog)  # the categories
    assert catalog.count("reconcile passed: drift 0") == 4
    assert "← 200 ready: True" in catalog
    assert "version 7 committed (platform-team: shadow catalog reads)" in catalog
    assert re.search(r"catalog: (\d+) compared, 0\.0 % differ \(0\), 0 failed", catalog)
    assert "version 8 committed (platform-team: canary)" in catalog
    split = re.findall(r'route="catalog",upstream="(\w+)"\} (\d+)\.0', catalog)
    assert {upstream for upstream, _ in split} == {"monolith", "catalog"}  # both arms served
    assert "version 10 committed (platform-team: catalog read side live)" in catalog
    assert 'strangler_requests_total{code="200",route="categories",upstream="catalog"}' in catalog
    assert re.search(r"The catalog shows (\d+\.\d\d) \d+\.\ds later", catalog)
    # and the migration ledger: each route's state, since when, who moved it why
    ledger = out[out.index("The migration ledger: every route's state") :]
    assert "$ strangler ledger" in ledger
    assert re.search(r"\n  payments +moved to payment +since version 5 \(", ledger)
    assert re.search(r"\n  static +static +since version 6 \(", ledger)
    assert re.search(r"\n  catalog +moved to catalog +since version 9 \(", ledger)
    assert re.search(r"\n  categories +moved to catalog +since version 10 \(", ledger)
    assert re.search(
        r"v4 +moved to payment → shadowed to payment +"
        r"platform-team: rollback to version 2: error rate up",
        ledger,
    )
    assert re.search(
        r"v8 +shadowed to catalog → canary 10% to catalog +platform-team: canary", ledger
    )
    # act 10: a rollout moves payments on evidence; a planted data fault rolls one back
    act = out[rollouts:]
    assert "$ strangler rollout start payments --to payment --steps 1,5,25,50,100" in act
    assert re.search(r"step \(version \d+\): step 1/5: 1% to payment", act)
    assert "reconcile FAILED: drift 1" in act
    assert re.search(r"rolled back: step \d/5 \(\d+% to payment\) failed: gate of upstream", act)
    assert "rollout rolled-back; payments are back on the monolith" in act
    assert act.count("reconcile passed: drift 0") == 2
    assert "step 5/5: 100% to payment: the route has moved" in act
    assert re.search(r"\(\d+ requests while it ran, 0 failed\)", act)
    assert re.search(r"evidence \(60 s\): errors [\d.]+% vs [\d.]+% legacy", act)
    assert "What the monolith still serves (last 15 min)" in act
    assert re.search(r"\d+  GET /api/v1/orders/\{id\}", act)
    assert re.search(r"the dashboard shows all of it: http://127\.0\.0\.1:\d+/dashboard", act)
    assert "Traceback" not in out + done.stderr


def test_the_replica_commands_share_one_table(
    monolith: Child, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """The Redis-store block: two replicas, a flip through the store, status from the second."""
    import httpx

    from proxy.procs import STRANGLER_READY

    table = (ROOT / "routes.yaml").read_text().replace("http://127.0.0.1:8001", monolith.url)
    (tmp_path / "routes.yaml").write_text(table)
    block = [c for c in readme_commands() if "--store redis://" in c or " routes status " in c]
    assert len(block) == 4

    def here(command: str) -> list[str]:
        args = [
            redis_url
            if a == "redis://127.0.0.1:6379/0"
            else re.sub(r"^(127\.0\.0\.1)?:\d+$", "127.0.0.1:0", a)
            for a in as_run_here(command)
        ]
        return [*args, "--store-prefix", redis_prefix] if "--store" in command else args

    first, second, flip, status = block
    with (
        Child("replica-1", here(first), cwd=str(tmp_path), ready=STRANGLER_READY),
        Child("replica-2", here(second), cwd=str(tmp_path), ready=STRANGLER_READY) as replica,
    ):
        done = subprocess.run(
            here(flip), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "version 2 committed" in done.stdout
        deadline = time.monotonic() + 10
        while True:
            answer = httpx.get(f"{replica.listeners['internal']}/api/v1/payments")
            if answer.headers["strangler-route-version"] == "2" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.headers["strangler-route-version"] == "2"
        args = [replica.listeners["admin"] if a.startswith("http://") else a for a in here(status)]
        shown = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        assert "serving version 2" in shown.stdout
        assert re.search(r"payments\s+moved\s+payment 100%", shown.stdout), shown.stdout
    # the second replica's last-known-good copy is the version it served last
    assert "version: 2" in (tmp_path / "var" / "replica-2.yaml").read_text()


def test_the_payment_service_and_sync_commands_run(monolith: Child, workdir: Path) -> None:
    """The service as the README starts it (beside the README's monolith, in its directory),
    then the data commands in the README's order on the databases they default to."""
    import httpx

    (serve,) = [c for c in readme_commands() if " -m services.payment " in c]
    args = [
        {"8002": "0", "http://127.0.0.1:8001": monolith.url}.get(a, a) for a in as_run_here(serve)
    ]
    with Child("payment", args, cwd=str(workdir)) as service:
        assert httpx.get(f"{service.url}/healthz").status_code == 200
        token = httpx.post(
            f"{monolith.url}/api/v1/auth/login",
            json={"email": "alice@example.com", "password": "password123"},
        ).json()["access_token"]
        mine = httpx.get(
            f"{service.url}/api/v1/payments", headers={"Authorization": f"Bearer {token}"}
        )
        assert mine.status_code == 200
    outputs = []
    payment_sync = [
        c
        for c in readme_commands()
        if c.startswith(".venv/bin/strangler sync ") and "services/catalog/" not in c
    ]
    for command in payment_sync:
        done = subprocess.run(
            as_run_here(command),
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    check, backfill, follow, reconcile, status, to_legacy = outputs
    assert "sync payments (" in check
    assert re.search(r"backfill done: \d+ rows", backfill)
    assert "follow:" in follow
    assert "reconcile passed: drift 0" in reconcile
    assert "cutover gate" in status
    assert "to-legacy" in to_legacy


def test_the_catalog_commands_run(monolith: Child, workdir: Path) -> None:
    """The catalog block in the README's order, beside the README's monolith, in its directory:
    both backfills, the service (port 0), one pass of each follower; then the catalog answers
    the monolith's catalog reads byte for byte, ETag included."""
    import httpx

    block = [c for c in readme_commands() if "services/catalog/" in c or "services.catalog" in c]
    assert len(block) == 5
    categories, products, serve, *follows = block
    for command in (categories, products):
        done = subprocess.run(
            as_run_here(command), cwd=workdir, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert re.search(r"backfill done: \d+ rows", done.stdout)
    for command in follows:  # one pass each: the README's run until stopped
        done = subprocess.run(
            [*as_run_here(command), "--once"], cwd=workdir, capture_output=True, text=True
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert (workdir / "var" / "catalog.db").exists()
    args = [{"8003": "0"}.get(a, a) for a in as_run_here(serve)]
    with Child("catalog", args, cwd=str(workdir)) as catalog:
        for path in ("/api/v1/categories", "/api/v1/products?q=pho&sort=price"):
            mine, theirs = httpx.get(catalog.url + path), httpx.get(monolith.url + path)
            assert mine.status_code == theirs.status_code == 200
            assert mine.content == theirs.content
            assert mine.headers["etag"] == theirs.headers["etag"]
