from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from clients.models import Merchant
from rounds.aggregation import LABELS

STRATEGY_CHOICES = [(name, label) for name, label in LABELS.items()]


class FederatedModel(models.Model):
    """A model trained by the federation: its tensors, strategy and local-training hints."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    tensors = models.JSONField(help_text="[{name, shape, dtype}, ...]")
    strategy = models.CharField(max_length=32, choices=STRATEGY_CHOICES, default="fedavg")
    strategy_params = models.JSONField(default=dict, blank=True)
    training_hints = models.JSONField(
        default=dict, blank=True, help_text="epochs, learning_rate, batch_size, proximal_mu"
    )
    privacy = models.JSONField(
        default=dict,
        blank=True,
        help_text="central DP: clip_norm, noise_multiplier, delta, epsilon_budget, accountant",
    )
    secure_aggregation = models.JSONField(
        default=dict,
        blank=True,
        help_text="secure aggregation ({} = off): neighbours, threshold, clip_range, max_weight, "
        "phase_seconds (rounds.services.secagg)",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """Immutable global weights at one point in time, stored as one safetensors file."""

    fl_model = models.ForeignKey(FederatedModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    weights = models.FileField(upload_to="versions/", max_length=255)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    produced_by = models.OneToOneField(
        "Round", null=True, blank=True, on_delete=models.PROTECT, related_name="result_version"
    )
    strategy = models.CharField(max_length=32, blank=True)
    strategy_params = models.JSONField(default=dict, blank=True)
    state = models.FileField(
        upload_to="states/",
        max_length=255,
        blank=True,
        help_text="server-optimiser state (safetensors) carried to the next round",
    )
    aggregation = models.JSONField(default=dict, blank=True, help_text="what the strategy did")
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["fl_model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["fl_model", "number"], name="version_number_unique")
        ]

    def __str__(self) -> str:
        return f"{self.fl_model.slug} v{self.number}"


class Round(models.Model):
    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        OPEN = "open", "Open"
        AGGREGATING = "aggregating", "Aggregating"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

    fl_model = models.ForeignKey(FederatedModel, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    base_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="rounds"
    )
    strategy = models.CharField(max_length=32, blank=True, help_text="fixed when the round opens")
    strategy_params = models.JSONField(default=dict, blank=True)
    privacy = models.JSONField(
        default=dict, blank=True, help_text="DP in force, sampling rate and epsilon after it"
    )
    secagg = models.JSONField(
        default=dict, blank=True, help_text="secure-aggregation settings in force and the context"
    )
    secagg_phase = models.CharField(max_length=16, blank=True, help_text="while the round is open")
    phase_deadline_at = models.DateTimeField(null=True, blank=True)
    min_updates = models.PositiveIntegerField(help_text="quorum: fewer at the deadline fails")
    target_updates = models.PositiveIntegerField(help_text="close as soon as this many arrive")
    duration_seconds = models.PositiveIntegerField(help_text="from opening to the deadline")
    opens_at = models.DateTimeField()
    deadline_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    participants = models.ManyToManyField(Merchant, related_name="rounds", blank=True)
    selection = models.JSONField(
        default=dict,
        blank=True,
        help_text="who is invited at open: {} = all active merchants; else fraction, "
        "over_selection and/or a cohort (rounds.services.selection)",
    )
    series = models.UUIDField(
        null=True, blank=True, db_index=True, help_text="rounds scheduled together as a series"
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["fl_model", "number"], name="round_number_unique"),
            models.CheckConstraint(condition=Q(min_updates__gte=1), name="round_quorum_positive"),
            models.CheckConstraint(
                condition=Q(target_updates__gte=models.F("min_updates")),
                name="round_target_at_least_quorum",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "deadline_at"]),
            models.Index(fields=["status", "opens_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.fl_model.slug} round {self.number}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class Update(models.Model):
    """One merchant's contribution to one round: stored tensors plus counts and metrics."""

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"

    fl_round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="updates")
    merchant = models.ForeignKey(Merchant, on_delete=models.PROTECT, related_name="updates")
    weights = models.FileField(upload_to="updates/", max_length=255)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    num_examples = models.PositiveBigIntegerField()
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACCEPTED)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["fl_round", "merchant"], name="one_update_per_merchant"
            ),
            models.CheckConstraint(
                condition=Q(num_examples__gte=1), name="update_examples_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"update of {self.merchant} to {self.fl_round}"


class Event(models.Model):
    """The audit trail: every state change, who did it and when. Also what the live feed sends."""

    kind = models.CharField(max_length=64)
    fl_round = models.ForeignKey(
        Round, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    merchant = models.ForeignKey(
        Merchant, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=100, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class Evaluation(models.Model):
    """A merchant's evaluation of a published version on its own held-out data."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="evaluations")
    num_examples = models.PositiveBigIntegerField()
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["version", "merchant"]
        constraints = [
            models.UniqueConstraint(fields=["version", "merchant"], name="one_evaluation_each"),
            models.CheckConstraint(condition=Q(num_examples__gte=1), name="evaluation_examples"),
        ]

    def __str__(self) -> str:
        return f"{self.merchant} on {self.version}"


class SecAggParticipant(models.Model):
    """One merchant in a secure-aggregation round: its index, keys and how far it got."""

    fl_round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="secagg_members")
    merchant = models.ForeignKey(Merchant, on_delete=models.PROTECT, related_name="+")
    index = models.PositiveSmallIntegerField(help_text="1..n, the Shamir x coordinate")
    c_public_key = models.BinaryField(help_text="registered X25519 key (share encryption)")
    s_public_key = models.BinaryField(null=True, blank=True, help_text="this round's mask key")
    neighbours = models.JSONField(default=list, blank=True)
    advertised_at = models.DateTimeField(null=True, blank=True)
    shared_at = models.DateTimeField(null=True, blank=True)
    masked_at = models.DateTimeField(null=True, blank=True)
    revealed_at = models.DateTimeField(null=True, blank=True)
    masked = models.FileField(upload_to="masked/", max_length=255, blank=True)
    masked_sha256 = models.CharField(max_length=64, blank=True)
    metrics = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["fl_round", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["fl_round", "merchant"], name="secagg_one_per_merchant"
            ),
            models.UniqueConstraint(fields=["fl_round", "index"], name="secagg_index_unique"),
        ]

    def __str__(self) -> str:
        return f"#{self.index} {self.merchant} in {self.fl_round}"


class SecAggShare(models.Model):
    """A sealed Shamir share bundle from ``sender`` to ``recipient``; in unmasking the recipient
    reveals the one half the server needs (b of a survivor, s of a dropped merchant)."""

    class Kind(models.TextChoices):
        SELF_MASK = "b", "self-mask seed"
        MASK_KEY = "s", "mask key"

    fl_round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="secagg_shares")
    sender = models.PositiveSmallIntegerField()
    recipient = models.PositiveSmallIntegerField()
    sealed = models.BinaryField()
    revealed = models.BinaryField(null=True, blank=True)
    revealed_kind = models.CharField(max_length=1, choices=Kind.choices, blank=True)

    class Meta:
        ordering = ["fl_round", "sender", "recipient"]
        constraints = [
            models.UniqueConstraint(
                fields=["fl_round", "sender", "recipient"], name="secagg_share_unique"
            )
        ]

    def __str__(self) -> str:
        return f"share {self.sender}->{self.recipient} in {self.fl_round}"
