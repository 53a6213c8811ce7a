"""Request-scoped dependencies: database session, cache, settings, the calling user, paging."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from legacy_monolith.cache import Cache
from legacy_monolith.db import utcnow
from legacy_monolith.errors import ApiError
from legacy_monolith.models import AuthToken, User
from legacy_monolith.security import token_digest
from legacy_monolith.settings import Settings

bearer_scheme = HTTPBearer(auto_error=False, description="Token from POST /api/v1/auth/login")


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_cache(request: Request) -> Cache:
    cache: Cache = request.app.state.cache
    return cache


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DB = Annotated[Session, Depends(get_db)]
CacheDep = Annotated[Cache, Depends(get_cache)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _unauthorized(detail: str) -> ApiError:
    err = ApiError(401, "unauthorized", detail)
    err.headers["WWW-Authenticate"] = 'Bearer realm="legacy-shop"'
    return err


def current_user(
    db: DB, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> User:
    if credentials is None:
        raise _unauthorized("A bearer token is required")
    row = db.scalars(
        select(AuthToken).where(AuthToken.token_hash == token_digest(credentials.credentials))
    ).first()
    if row is None or row.expires_at <= utcnow() or not row.user.is_active:
        raise _unauthorized("The bearer token is invalid or expired")
    return row.user


CurrentUser = Annotated[User, Depends(current_user)]


def is_staff(user: User) -> bool:
    return user.role == "staff"


def require_staff(user: CurrentUser) -> User:
    if not is_staff(user):
        raise ApiError(403, "forbidden", "Staff only")
    return user


StaffUser = Annotated[User, Depends(require_staff)]


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
