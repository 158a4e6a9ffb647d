"""Process logging: one format, and libraries kept from logging what Kyma must never log.

The stripe library logs API errors at INFO with the key's last characters in the message, and
HTTP clients log every request line; neither belongs in Kyma's logs, which never hold a key.
Alembic names its plugins as it loads them, which says nothing to an operator.
"""

from __future__ import annotations

import logging

_QUIET = {
    "stripe": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    # Seven lines at every first start, naming Alembic's autogenerate plugins, which Kyma never
    # uses; the migrations' own lines ("Running upgrade …") stay.
    "alembic.runtime.plugins": logging.WARNING,
}


def quiet_libraries() -> None:
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries()
