from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Merchant(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending approval"
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    class SizeBand(models.TextChoices):
        SMALL = "small", "Small"
        MEDIUM = "medium", "Medium"
        LARGE = "large", "Large"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    category = models.CharField(max_length=64, blank=True, help_text="e.g. grocery, fashion")
    region = models.CharField(max_length=64, blank=True, help_text="e.g. eu-west")
    size_band = models.CharField(max_length=16, choices=SizeBand.choices, blank=True)
    contact_email = models.EmailField(blank=True)
    public_key = models.TextField(blank=True, help_text="X25519 key for secure aggregation")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    last_seen_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="last API call with one of its tokens"
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "active", "suspended"]),
                name="merchant_status_valid",
            )
        ]
        # The portal's merchant list filters and sorts on these (10,000+ merchants).
        indexes = [
            models.Index(fields=["name", "id"], name="merchant_name_idx"),
            models.Index(fields=["status", "name"], name="merchant_status_idx"),
            models.Index(fields=["category"], name="merchant_category_idx"),
            models.Index(fields=["region"], name="merchant_region_idx"),
            models.Index(fields=["last_seen_at"], name="merchant_last_seen_idx"),
            models.Index(fields=["created_at"], name="merchant_created_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiToken(models.Model):
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="tokens")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"flp_{self.prefix}_… ({self.merchant})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_usable(self, now: timezone.datetime | None = None) -> bool:
        now = now or timezone.now()
        return not self.is_revoked and (self.expires_at is None or self.expires_at > now)
