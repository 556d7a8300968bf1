"""Password hashing with Argon2id."""

from __future__ import annotations

import pytest

from shared.auth.passwords import hash_password, verify_password


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password("correct horse")


def test_hash_is_argon2id(stored: str) -> None:
    assert stored.startswith("$argon2id$")


def test_hash_is_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_right_password_verifies(stored: str) -> None:
    assert verify_password(stored, "correct horse") is True


@pytest.mark.parametrize("wrong", ["", "correct horse ", "Correct horse", "correct", "x" * 1000])
def test_wrong_password_does_not_verify(stored: str, wrong: str) -> None:
    assert verify_password(stored, wrong) is False


def test_unknown_user_does_not_verify() -> None:
    assert verify_password(None, "anything") is False


def test_unknown_user_with_the_dummy_password_does_not_verify() -> None:
    assert verify_password(None, "warren-no-such-user") is False


@pytest.mark.parametrize(
    "garbage", ["not a hash", "$argon2id$broken", "$2b$12$abcdefghijklmnopqrstuv"]
)
def test_malformed_hash_does_not_verify(garbage: str) -> None:
    assert verify_password(garbage, "anything") is False


def test_empty_hash_does_not_verify() -> None:
    assert verify_password("", "anything") is False


def test_empty_hash_with_the_dummy_password_does_not_verify() -> None:
    # An empty stored hash (a disabled account, a bad migration) must never let anyone in.
    assert verify_password("", "warren-no-such-user") is False


def test_unicode_password_round_trips() -> None:
    assert verify_password(hash_password("pässwörd🔑"), "pässwörd🔑") is True
