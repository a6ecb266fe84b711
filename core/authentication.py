"""API token authentication in one plain SQL statement.

DRF's ``TokenAuthentication`` loads the token with ``select_related("user")``: one query, but
building and compiling it costs more CPU than the whole annotator-loop request spends
elsewhere in the ORM. This subclass runs the same lookup (token joined to its user) as
plain SQL (see :mod:`core.rawsql`) and behaves the same: the ``Token`` keyword, the same
401 errors for an unknown token or an inactive user, ``request.user`` and ``request.auth``
as before. DRF caches the result on the request, so it runs once per request.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions

from core import rawsql


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>``, looked up with one plain SQL join of token and user."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        token_model, user_model = self.get_model(), get_user_model()
        user_pk, token_user, token_key = (rawsql.column(user_model, "pk"), rawsql.column(token_model, "user"),
                                          rawsql.column(token_model, "key"))
        sql = (
            f"SELECT {rawsql.columns(token_model, 't')}, {rawsql.columns(user_model, 'u')} "  # noqa: S608 - names only
            f"FROM {rawsql.table(token_model)} t JOIN {rawsql.table(user_model)} u ON u.{user_pk} = t.{token_user} "
            f"WHERE t.{token_key} = %s"
        )
        row = rawsql.fetchone(sql, [key])
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        split = rawsql.width(token_model)
        token, user = rawsql.load(token_model, row[:split]), rawsql.load(user_model, row[split:])
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token.user = user  # type: ignore[attr-defined]
        return user, token
