"""Login, logout and registration."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from legacy_monolith.api.deps import DB, CurrentUser, SettingsDep, bearer_scheme
from legacy_monolith.db import utcnow
from legacy_monolith.errors import ApiError
from legacy_monolith.models import AuthToken, User
from legacy_monolith.schemas import LoginIn, RegisterIn, TokenOut, UserOut
from legacy_monolith.security import hash_password, new_token, token_digest, verify_password

router = APIRouter(tags=["auth"])


def issue_token(db: DB, user: User, ttl_seconds: int) -> TokenOut:
    # Expired tokens go when their user logs in again, so the table does not grow forever.
    db.execute(
        delete(AuthToken).where(AuthToken.user_id == user.id, AuthToken.expires_at <= utcnow())
    )
    token = new_token()
    db.add(
        AuthToken(
            token_hash=token_digest(token),
            user_id=user.id,
            expires_at=utcnow() + timedelta(seconds=ttl_seconds),
        )
    )
    db.commit()
    return TokenOut(access_token=token, expires_in=ttl_seconds, user_id=user.id)


@router.post("/auth/login", response_model=TokenOut)
def login(body: LoginIn, db: DB, settings: SettingsDep) -> TokenOut:
    # Emails are stored lower-cased (the schema lowers input), so the unique index serves this.
    user = db.scalars(select(User).where(User.email == body.email)).first()
    if user is None or not user.is_active or not verify_password(body.password, user.password_hash):
        raise ApiError(401, "invalid-credentials", "Email or password is wrong")
    return issue_token(db, user, settings.token_ttl_seconds)


@router.post("/auth/logout", status_code=204, response_class=Response)
def logout(
    db: DB,
    _user: CurrentUser,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Response:
    assert credentials is not None  # current_user already refused a missing token
    db.execute(
        delete(AuthToken).where(AuthToken.token_hash == token_digest(credentials.credentials))
    )
    db.commit()
    return Response(status_code=204)


@router.post("/users", response_model=UserOut, status_code=201, tags=["users"])
def register(body: RegisterIn, db: DB, settings: SettingsDep) -> User:
    email = body.email
    if db.scalars(select(User.id).where(User.email == email)).first() is not None:
        raise ApiError(409, "email-taken", f"{email} is already registered")
    user = User(
        email=email,
        password_hash=hash_password(body.password, settings.password_iterations),
        full_name=body.full_name,
        phone=body.phone,
    )
    db.add(user)
    try:
        db.commit()
    except IntegrityError:  # a concurrent registration won the unique index
        db.rollback()
        raise ApiError(409, "email-taken", f"{email} is already registered") from None
    return user
