"""Property-based fuzzing of the monolith against its own OpenAPI document (schemathesis).

Every operation the document lists is fuzzed in-process (ASGI, no sockets) on a fresh copy of a
small seeded SQLite shop, with schema-valid ("positive") and schema-violating ("negative")
requests: operations behind the bearer token as the seeded staff user, as a plain customer and
anonymously, public ones anonymously. Every answer must be:

- never a 5xx: bad input is the caller's fault, so it is a 4xx (see `legacy_monolith.errors`);
- if a 4xx, an RFC 9457 problem: `application/problem+json`, a JSON object with string `type`,
  `title` and `detail` and an integer `status` equal to the HTTP status;
- as documented, where the document says (schemathesis's `response_schema_conformance`). It
  picks the documented schema by the answer's media type, and the document declares only
  `application/json`, so in effect it checks the 2xx bodies; problem+json answers are left to the
  problem check above. (That matters for 422s: they are documented with FastAPI's default
  `HTTPValidationError`, which this app never sends; validating them would only fail on that.)

Bounded and reproducible: a fixed number of examples per operation, derandomized, no example
database, and each test starts from its own copy of the same seeded shop. (Hypothesis also mixes
in constants from the project's source, so the examples follow the code under test; it caches
them under `.hypothesis/`, which git ignores.)
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import given, settings
from schemathesis import Case, GenerationMode, Response
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import select, true
from sqlalchemy.orm import Session

from legacy_monolith.app import create_app
from legacy_monolith.db import make_engine
from legacy_monolith.errors import PROBLEM_MEDIA_TYPE
from legacy_monolith.models import CartItem, Product, User
from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER, STAFF_USER
from tests.legacy_monolith.conftest import make_settings, seed_small

LOGIN = "POST /api/v1/auth/login"
POSTGRES_EXAMPLES = 25
LOGOUT = "POST /api/v1/auth/logout"
USERS = {"staff": STAFF_USER, "customer": DEMO_USER}
ANONYMOUS = "anonymous"

# Examples per (operation, role, generation mode). Signed-in requests are the ones that reach
# the handlers of protected operations; anonymous ones only fuzz the token check there.
EXAMPLES = {"staff": 40, "customer": 25, ANONYMOUS: 10}
PUBLIC_EXAMPLES = 40


def _without_security(document: dict[str, Any]) -> dict[str, Any]:
    """The document minus its bearer requirement, for requests the test signs in itself.

    Left in, schemathesis generates the `Authorization` header like any other input (a random
    token; in negative mode a missing or malformed header), which a signed-in request must not
    carry. Anonymous requests keep it: that fuzzes the token check.
    """
    stripped = copy.deepcopy(document)
    stripped.pop("security", None)
    stripped.get("components", {}).pop("securitySchemes", None)
    for path_item in stripped["paths"].values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.pop("security", None)
    return stripped


def _operations(document: dict[str, Any]) -> dict[str, Any]:
    # An explicit default config, so a stray schemathesis.toml cannot change what runs here.
    schema = schemathesis.openapi.from_dict(document, config=schemathesis.Config())
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


# The document depends on the routes only: an app on an in-memory database (never connected to)
# serves it at collection time, before any shop is seeded.
DOCUMENT = create_app(make_settings("sqlite://")).openapi()
AS_DOCUMENTED = _operations(DOCUMENT)
SIGNED_IN = _operations(_without_security(DOCUMENT))


def _is_public(label: str) -> bool:
    method, path = label.split(" ", 1)
    return not DOCUMENT["paths"][path][method.lower()].get("security")


def _operation(label: str, role: str) -> Any:
    return (AS_DOCUMENTED if role == ANONYMOUS else SIGNED_IN)[label]


def _has_inputs(operation: Any) -> bool:
    """Negative data needs something to break: a parameter or a body."""
    groups = (operation.path_parameters, operation.query, operation.headers, operation.cookies)
    return any(len(group) for group in groups) or len(operation.body) > 0


def _params() -> Iterator[Any]:
    for label in AS_DOCUMENTED:
        roles = [ANONYMOUS] if _is_public(label) else [*USERS, ANONYMOUS]
        for role in roles:
            examples = PUBLIC_EXAMPLES if _is_public(label) else EXAMPLES[role]
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not _has_inputs(_operation(label, role)):
                    continue
                yield pytest.param(label, role, mode, examples, id=f"{role}-{mode.value}-{label}")


@dataclass
class Shop:
    """A seeded shop of the test's own, served in-process, with its users' bearer headers."""

    app: FastAPI
    _headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def login(self, role: str) -> dict[str, str]:
        body = {"email": USERS[role], "password": DEMO_PASSWORD}
        case = SIGNED_IN[LOGIN].Case(body=body, media_type="application/json")
        answer = case.call(app=self.app)
        assert answer.status_code == 200, answer.content
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def headers(self, role: str) -> dict[str, str]:
        if role == ANONYMOUS:
            return {}
        if role not in self._headers:
            self._headers[role] = self.login(role)
        return self._headers[role]


def _fill_carts(url: str) -> None:
    """One item in the cart of each user the tests sign in as, so that placing an order gets
    past "cart is empty" at least once."""
    engine = make_engine(url)
    try:
        with Session(engine) as db:
            product = db.scalars(
                select(Product)
                .where(Product.is_active == true(), Product.stock_qty >= 20)
                .order_by(Product.id)
            ).first()
            assert product is not None, "the seeded shop has no product with enough stock"
            for email in USERS.values():
                user = db.scalars(select(User).where(User.email == email)).one()
                db.add(CartItem(user_id=user.id, product_id=product.id, quantity=1))
            db.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def seeded_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small seeded shop on SQLite, copied afresh for each test (see `shop`)."""
    path = tmp_path_factory.mktemp("fuzz-shop") / "shop.db"
    seed_small(f"sqlite:///{path}")
    _fill_carts(f"sqlite:///{path}")
    # The last connection closed: SQLite folded its WAL back in, the file is the whole shop.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="module")
def postgres_shop(postgres_databases: Callable[[], str]) -> Iterator[Shop]:
    """One seeded shop on the real PostgreSQL, shared by the PostgreSQL runs: it enforces what
    SQLite does not (string lengths, numeric precision), so it finds 500s SQLite cannot."""
    url = postgres_databases()
    seed_small(url)
    _fill_carts(url)
    app = create_app(make_settings(url))
    yield Shop(app)
    app.state.engine.dispose()


@pytest.fixture
def shop(seeded_shop: Path, tmp_path: Path) -> Iterator[Shop]:
    """A fresh copy of the seeded shop per test: every test starts from the same state."""
    path = tmp_path / "shop.db"
    shutil.copyfile(seeded_shop, path)
    app = create_app(make_settings(f"sqlite:///{path}"))
    yield Shop(app)
    # schemathesis keeps an app's lifespan running until the interpreter exits; close the
    # database now (the lifespan's own shutdown disposes the engine again, harmlessly).
    app.state.engine.dispose()


def _describe(response: Response) -> str:
    """The request exactly as sent, bearer token masked."""
    request = response.request
    headers = {
        name: "Bearer ***" if name.lower() == "authorization" else value
        for name, value in request.headers.items()
    }
    body = (
        request.body.decode(errors="replace") if isinstance(request.body, bytes) else request.body
    )
    return f"{request.method} {request.url}\n  headers: {headers}\n  body: {body!r}"


def _as_curl(case: Case, headers: dict[str, str]) -> str:
    try:
        return case.as_curl_command(headers=headers)  # masks the bearer token
    except Exception:  # the input that broke the app may break the rendering too
        return f"{case.method.upper()} {case.formatted_path} (no curl rendering)"


def _tracebacks(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter()
    found = [formatter.formatException(r.exc_info) for r in caplog.records if r.exc_info]
    return "\n".join(found) or "(nothing logged)"


def problem_errors(response: Response) -> list[str]:
    """What keeps this answer from being an RFC 9457 problem (nothing when it is one)."""
    errors = []
    content_type = ", ".join(response.headers.get("content-type", []))
    if content_type.split(";", 1)[0].strip().lower() != PROBLEM_MEDIA_TYPE:
        errors.append(f"content-type is {content_type!r}, not {PROBLEM_MEDIA_TYPE!r}")
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*errors, "the body is not JSON"]
    if not isinstance(body, dict):
        return [*errors, "the body is not a JSON object"]
    for member in ("type", "title", "detail"):
        if not isinstance(body.get(member), str):
            errors.append(f"{member!r} is not a string: {body.get(member)!r}")
    status = body.get("status")
    if type(status) is not int or status != response.status_code:
        errors.append(f"'status' is {status!r}, the HTTP status is {response.status_code}")
    return errors


def check_answer(case: Case, response: Response, caplog: pytest.LogCaptureFixture) -> None:
    """No 5xx; every 4xx a problem; every answer as documented, where documented."""
    status = response.status_code
    answer = response.content.decode(errors="replace")[:2000]
    if status >= 500:
        raise AssertionError(
            f"{status} for\n  {_describe(response)}\nanswer: {answer}\n"
            f"server log:\n{_tracebacks(caplog)}"
        )
    if 400 <= status < 500 and (errors := problem_errors(response)):
        raise AssertionError(
            f"{status} is not a problem ({'; '.join(errors)}) for\n  {_describe(response)}\n"
            f"answer: {answer}"
        )
    case.validate_response(response, checks=[response_schema_conformance])


FUZZ_SETTINGS = settings(
    deadline=None,  # in-process calls on SQLite: their timing says more about the runner
    derandomize=True,  # the same examples on every run, so CI failures reproduce locally
    database=None,  # a derandomized run needs no database of failures to replay
    # No health check is suppressed: none is irrelevant here. `function_scoped_fixture` cannot
    # fire (`@given` wraps an inner function, the fixtures belong to the pytest test around it);
    # `too_slow` did not fire even with two CPU-bound processes competing for 2 cores; and
    # `filter_too_much` / `data_too_large` / `large_base_example` would mean schemathesis cannot
    # fuzz an operation properly, which should fail loudly rather than pass quietly.
    suppress_health_check=[],
)


@pytest.mark.parametrize(("label", "role", "mode", "examples"), list(_params()))
def test_no_server_errors_and_every_client_error_is_a_problem(
    label: str,
    role: str,
    mode: GenerationMode,
    examples: int,
    shop: Shop,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = shop.headers(role)

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=_operation(label, role).as_strategy(generation_mode=mode))
    def fuzz(case: Case) -> None:
        # Logging out revokes the token it is sent with: each example gets a token of its own.
        sent = shop.login(role) if label == LOGOUT and role != ANONYMOUS else headers
        caplog.clear()
        try:
            response = case.call(app=shop.app, headers=sent)
        except Exception as exc:
            # Starlette answers 500 to an unhandled exception and then re-raises it for the
            # server to log; in-process it reaches us instead of that 500.
            raise AssertionError(
                f"calling the app raised {exc!r} (an unhandled exception answers 500) for\n"
                f"  {_as_curl(case, sent)}"
            ) from exc
        check_answer(case, response, caplog)

    fuzz()


def _postgres_params() -> Iterator[Any]:
    for label in AS_DOCUMENTED:
        if label == LOGOUT:  # it would revoke the shared staff token
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.POSITIVE or _has_inputs(_operation(label, "staff")):
                yield pytest.param(label, mode, id=f"{mode.value}-{label}")


@pytest.mark.postgres
@pytest.mark.parametrize(("label", "mode"), list(_postgres_params()))
def test_no_server_errors_on_postgresql(
    label: str, mode: GenerationMode, postgres_shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    """The same property as above, as staff, on PostgreSQL (one shop, state carries over)."""
    operation = _operation(label, "staff")
    headers = postgres_shop.headers("staff")

    @settings(FUZZ_SETTINGS, max_examples=POSTGRES_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Case) -> None:
        caplog.clear()
        response = case.call(app=postgres_shop.app, headers=headers)
        check_answer(case, response, caplog)

    fuzz()
