"""The canonical form of an address (one account per person) and disposable domains."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core_service.accounts.emails import canonicalize, is_disposable, parse_email
from core_service.errors import InvalidRequest


@pytest.mark.parametrize(
    "address, canonical",
    [
        ("Alice@Example.com", "alice@example.com"),
        ("a.b+tag@example.com", "a.b+tag@example.com"),  # unknown providers keep dots and tags
        ("A.B+x@googlemail.com", "ab@gmail.com"),
        ("c.d+work@outlook.com", "c.d@outlook.com"),
        # Fastmail: plus and subdomain addressing; a username's _ is - in its subdomain.
        ("user+news@fastmail.com", "user@fastmail.com"),
        ("shop@user.fastmail.com", "user@fastmail.com"),
        ("x+y@User.FastMail.FM", "user@fastmail.fm"),
        ("a@b.user.fastmail.com", "user@fastmail.com"),
        ("joe_citizen@fastmail.fm", "joe-citizen@fastmail.fm"),
        ("list@joe-citizen.fastmail.fm", "joe-citizen@fastmail.fm"),
        ("shop@user.sent.com", "user@sent.com"),
        ("user@fastmail.com.au", "user@fastmail.com.au"),
        ("shop@user.fastmail.com.au", "user@fastmail.com.au"),
        ("alice@sent.com", "alice@sent.com"),  # another Fastmail domain, another mailbox
        # Proton: one family of domains, dots, underscores and hyphens transparent.
        ("John.Doe@proton.me", "johndoe@proton.me"),
        ("john_doe+x@protonmail.com", "johndoe@proton.me"),
        ("john-doe@protonmail.ch", "johndoe@proton.me"),
        ("j.o.h.n.d.o.e@pm.me", "johndoe@proton.me"),
        # Not the providers, though their names are inside.
        ("shop@user.notfastmail.com", "shop@user.notfastmail.com"),
        ("john.doe@proton.me.example.com", "john.doe@proton.me.example.com"),
    ],
)
def test_canonical_forms(address: str, canonical: str) -> None:
    assert canonicalize(address) == canonical
    assert parse_email(address).canonical == canonical


_LOCAL = st.text(alphabet="abcXYZ019._-+", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum() and ".." not in s
)
_DOMAIN = st.sampled_from(
    [
        "gmail.com",
        "googlemail.com",
        "proton.me",
        "pm.me",
        "protonmail.ch",
        "fastmail.com",
        "user.fastmail.com",
        "a-b.fastmail.fm",
        "outlook.com",
        "example.com",
    ]
)


@given(_LOCAL, _DOMAIN)
def test_the_canonical_form_is_a_fixed_point(local: str, domain: str) -> None:
    once = canonicalize(f"{local}@{domain}")
    assert canonicalize(once) == once


@pytest.mark.parametrize(
    "address, disposable",
    [
        ("someone@mailinator.com", True),
        ("someone@MAILINATOR.com", True),
        ("someone@sub.mailinator.com", True),
        ("x@guerrillamail.com", True),
        ("x@yopmail.com", True),
        ("x@gmail.com", False),
        ("x@proton.me", False),
        ("x@user.fastmail.com", False),
        ("x@example.com", False),
        ("x@mailinator.com.example.org", False),
    ],
)
def test_disposable_domains(address: str, disposable: bool) -> None:
    assert is_disposable(parse_email(address)) is disposable


def test_invalid_addresses_name_the_field() -> None:
    for bad in ("", "   ", "not-an-email", "a@b", "x" * 300 + "@example.com", 5):
        with pytest.raises(InvalidRequest) as refused:
            parse_email(bad)
        assert refused.value.param == "email"
