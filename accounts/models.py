"""Access records: API tokens (stored hashed) and the audit log."""

import hashlib
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models

TOKEN_PREFIX = "hub_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    token_hash = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)
    # None: it never lapses. After this moment the token is refused like a revoked one.
    expires = models.DateTimeField(null=True, blank=True)
    # "": it acts with its owner's role. Else it acts with at most this role, even when its
    # owner holds a higher one (a read-only token for a dashboard, say).
    role = models.CharField(max_length=10, blank=True, default="")

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(
        cls, user: object, name: str, expires: datetime | None = None, role: str = ""
    ) -> tuple["ApiToken", str]:
        """Create a token; the raw value is returned once and never stored. The caller checks
        that `role` is at most the owner's (accounts.access.issue_token)."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user,
            name=name,
            prefix=raw[:8],
            token_hash=hash_token(raw),
            expires=expires,
            role=role,
        )
        return token, raw

    def lapsed(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now


class AuditEntry(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=60, db_index=True)
    target = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=20, default="ok")
    detail = models.JSONField(default=dict, blank=True)
    via = models.CharField(max_length=10, default="web")  # web | api | cli
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.target} {self.outcome}"
