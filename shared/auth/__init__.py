"""Authentication: JWTs with a pinned algorithm, and password hashing."""

from shared.auth.passwords import hash_password, verify_password
from shared.auth.tokens import AuthSettings, Identity, TokenError, TokenService, admin_role

__all__ = [
    "AuthSettings",
    "Identity",
    "TokenError",
    "TokenService",
    "admin_role",
    "hash_password",
    "verify_password",
]
