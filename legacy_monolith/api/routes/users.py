"""The signed-in user's profile."""

from __future__ import annotations

from fastapi import APIRouter

from legacy_monolith.api.deps import DB, CurrentUser
from legacy_monolith.models import User
from legacy_monolith.schemas import UserOut, UserPatch

router = APIRouter(tags=["users"])


@router.get("/users/me", response_model=UserOut)
def me(user: CurrentUser) -> User:
    return user


@router.patch("/users/me", response_model=UserOut)
def update_me(body: UserPatch, user: CurrentUser, db: DB) -> User:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("full_name", "") is None:
        changes.pop("full_name")
    for field, value in changes.items():
        setattr(user, field, value)
    db.commit()
    return user
