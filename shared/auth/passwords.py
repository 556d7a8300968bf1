"""Password hashing with Argon2id (argon2-cffi). Slow on purpose: call it off the event loop."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a missing user costs as much
    time as a wrong password."""
    return _hasher.hash("warren-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        if not password_hash:
            _hasher.verify(_dummy_hash(), password)  # same cost as a real check
            return False
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
