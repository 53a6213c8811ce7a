"""Request-scoped dependencies: the app's services, the calling user (checked by the monolith),
staff-only access and paging, declared as the monolith declares them (same order of checks:
401 before 403 before 422, the same query limits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.payment.auth import Authenticator, Caller
from services.payment.errors import ApiError, unauthorized
from services.payment.idempotency import IdempotencyStore
from services.payment.ids import IdAllocator
from services.payment.legacy import LegacyClient
from services.payment.settings import Settings

bearer_scheme = HTTPBearer(
    auto_error=False, description="Token from the monolith's POST /api/v1/auth/login"
)


@dataclass(frozen=True)
class Services:
    """What the routes use, built once by `create_app`."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    # For transactions that only read (on SQLite they take no write lock).
    readers: sessionmaker[Session]
    ids: IdAllocator
    legacy: LegacyClient
    auth: Authenticator
    idempotency: IdempotencyStore
    # Called after a commit that recorded events (wakes the outbox relay).
    events_committed: Callable[[], None]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def current_caller(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    if credentials is None:
        raise unauthorized("A bearer token is required")
    return services.auth.caller(credentials.credentials)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


def require_staff(caller: CurrentCaller) -> Caller:
    if not caller.is_staff:
        raise ApiError(403, "forbidden", "Staff only")
    return caller


StaffCaller = Annotated[Caller, Depends(require_staff)]


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def pages(self, total: int) -> int:
        return max(1, -(-total // self.per_page))


def paging(
    page: Annotated[int, Query(ge=1, le=100_000, description="1-based page number")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 20,
) -> Paging:
    return Paging(page, per_page)


PagingDep = Annotated[Paging, Depends(paging)]
