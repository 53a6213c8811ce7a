"""Property-based fuzzing of the monolith against its own OpenAPI document (schemathesis).

Every operation the document lists is fuzzed in-process (ASGI, no sockets) on a fresh copy of a
small seeded SQLite shop, as the seeded staff user, as a plain customer and anonymously, with
schema-valid ("positive") and schema-violating ("negative") requests. Each answer must be:

- never a 5xx: bad input is the caller's fault, so it is a 4xx (see `legacy_monolith.errors`);
- if a 4xx, an RFC 9457 problem: `application/problem+json`, a JSON object with string `type`,
  `title` and `detail` and an integer `status` equal to the HTTP status;
- whatever the status, conform to the response schema the document gives for it (schemathesis's
  `response_schema_conformance`). The document declares its schemas under `application/json`
  only, and schemathesis picks the schema by the answer's media type, so this checks the 2xx
  bodies; problem+json answers (including 422s, documented with FastAPI's default
  `HTTPValidationError` that this app never sends) are left to the problem check above.

Bounded and reproducible: a fixed number of examples per operation, derandomized (the examples
are a function of the code under test and of the installed Hypothesis and schemathesis), no
example database, and each test gets its own copy of the same seeded shop.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode, Response
from schemathesis.specs.openapi.checks import response_schema_conformance

from legacy_monolith.app import create_app
from legacy_monolith.errors import PROBLEM_MEDIA_TYPE
from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER, STAFF_USER
from tests.legacy_monolith.conftest import make_settings, seed_small

LOGIN = "POST /api/v1/auth/login"
LOGOUT = "POST /api/v1/auth/logout"

# Who sends the fuzzed requests. Most operations need a bearer token, so the signed-in roles are
# the ones that reach the handlers' own validation; anonymous requests mostly stop at the 401.
ROLES: dict[str, str | None] = {"staff": STAFF_USER, "customer": DEMO_USER, "anonymous": None}
MAX_EXAMPLES = {"staff": 40, "customer": 30, "anonymous": 10}


def _load_schema() -> Any:
    # The document depends only on the routes, not on the settings: an app on an in-memory
    # database (never connected to) serves it at collection time, before any shop is seeded.
    document = create_app(make_settings("sqlite://")).openapi()
    # An explicit default config, so no schemathesis.toml lying around changes what runs here.
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config())


SCHEMA = _load_schema()
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


def _has_inputs(label: str) -> bool:
    """Negative data needs something to break: a parameter or a body."""
    op = OPERATIONS[label]
    return any(len(group) for group in (op.path_parameters, op.query, op.headers, op.cookies)) or (
        len(op.body) > 0
    )


def _params() -> Iterator[Any]:
    for label in OPERATIONS:
        for role in ROLES:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not _has_inputs(label):
                    continue
                yield pytest.param(label, role, mode, id=f"{role}-{mode.value}-{label}")


@dataclass
class Shop:
    """A seeded shop of the test's own, served in-process, and its signed-in users' headers."""

    app: FastAPI
    _headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def call(self, label: str, headers: dict[str, str] | None = None, **data: Any) -> Response:
        case: Case = OPERATIONS[label].Case(media_type="application/json", **data)
        return case.call(app=self.app, headers=headers)

    def login(self, email: str) -> dict[str, str]:
        answer = self.call(LOGIN, body={"email": email, "password": DEMO_PASSWORD})
        assert answer.status_code == 200, answer.content
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def headers(self, role: str) -> dict[str, str]:
        email = ROLES[role]
        if email is None:
            return {}
        if role not in self._headers:
            self._headers[role] = self.login(email)
        return self._headers[role]


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-shop") / "shop.db"
    seed_small(f"sqlite:///{path}")
    # seed_small disposed its engine: SQLite folded the WAL back in, the file is the whole shop.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def shop(seeded_template: Path, tmp_path: Path) -> Iterator[Shop]:
    """A fresh copy of the seeded shop per test, so each test sees the same starting state."""
    path = tmp_path / "shop.db"
    shutil.copyfile(seeded_template, path)
    app = create_app(make_settings(f"sqlite:///{path}"))
    yield Shop(app)
    # schemathesis keeps an app's lifespan running until the interpreter exits; close the
    # database now instead (the lifespan's own shutdown disposes the engine again, harmlessly).
    app.state.engine.dispose()


def _describe(case: Case, response: Response | None) -> str:
    request = response.request if response is not None else None
    if request is None:
        return f"{case.method.upper()} {case.formatted_path} query={case.query} body={case.body!r}"
    body = (
        request.body.decode(errors="replace") if isinstance(request.body, bytes) else request.body
    )
    return f"{request.method} {request.url}\n  body: {body!r}"


def _tracebacks(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter()
    return "\n".join(
        formatter.formatException(record.exc_info) for record in caplog.records if record.exc_info
    )


def problem_errors(response: Response) -> list[str]:
    """What makes this 4xx answer not an RFC 9457 problem (empty when it is one)."""
    errors = []
    content_type = ",".join(response.headers.get("content-type", []))
    if content_type.split(";", 1)[0].strip().lower() != PROBLEM_MEDIA_TYPE:
        errors.append(f"content-type is {content_type!r}, not {PROBLEM_MEDIA_TYPE!r}")
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*errors, "body is not JSON"]
    if not isinstance(body, dict):
        return [*errors, "body is not a JSON object"]
    for member in ("type", "title", "detail"):
        if not isinstance(body.get(member), str):
            errors.append(f"{member!r} is not a string: {body.get(member)!r}")
    status = body.get("status")
    if type(status) is not int or status != response.status_code:
        errors.append(f"'status' is {status!r}, the HTTP status is {response.status_code}")
    return errors


def check_answer(case: Case, response: Response, caplog: pytest.LogCaptureFixture) -> None:
    """No 5xx; every 4xx a problem; every answer as documented (where documented)."""
    status = response.status_code
    where = _describe(case, response)
    answer = response.content.decode(errors="replace")[:2000]
    if status >= 500:
        raise AssertionError(
            f"{status} for\n  {where}\nanswer: {answer}\nserver log:\n{_tracebacks(caplog)}"
        )
    if 400 <= status < 500:
        errors = problem_errors(response)
        if errors:
            raise AssertionError(
                f"{status} is not problem+json ({'; '.join(errors)}) for\n  {where}\n"
                f"answer: {answer}"
            )
    case.validate_response(response, checks=[response_schema_conformance])


# too_slow: it measures how long *generating* inputs takes, and schemathesis's strategies for
# nested JSON bodies are slow to draw on a loaded 2-core CI runner; the run is bounded by
# max_examples anyway, so a slow draw is not a defect of the API under test.
FUZZ_SETTINGS = settings(
    deadline=None,  # in-process requests on SQLite: timing varies with the machine, not a bug
    derandomize=True,
    database=None,  # reproducible from the code alone, and nothing written to .hypothesis/examples
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(("label", "role", "mode"), list(_params()))
def test_operation_never_errors_and_answers_problems(
    label: str, role: str, mode: GenerationMode, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    operation = OPERATIONS[label]
    headers = shop.headers(role)
    # Logging out revokes the token it is sent with: give each example a token of its own.
    fresh_token = label == LOGOUT and bool(headers)

    @settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES[role])
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Case) -> None:
        sent = shop.login(ROLES[role] or "") if fresh_token else headers
        caplog.clear()
        try:
            response = case.call(app=shop.app, headers=sent)
        except Exception as exc:
            # Starlette re-raises an unhandled exception after answering 500 with it; in-process
            # that reaches us instead of the 500, and is the same bug.
            raise AssertionError(
                f"the app raised {exc!r} (a 500) for\n  {_describe(case, None)}"
            ) from exc
        check_answer(case, response, caplog)

    fuzz()
