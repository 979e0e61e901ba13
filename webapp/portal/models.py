from django.db import models


class WorkerProbe(models.Model):
    """A round trip through the broker to one queue: sent by the web process, completed by
    whichever worker consumes that queue. The system status page shows the latest per queue,
    so an administrator sees at once whether the `cpu` and `gpu` workers are alive."""

    queue = models.CharField(max_length=32, db_index=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    worker_hostname = models.CharField(max_length=255, blank=True)
    worker_detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"probe {self.pk} -> {self.queue}"

    @property
    def round_trip_ms(self) -> float | None:
        if self.completed_at is None:
            return None
        return (self.completed_at - self.requested_at).total_seconds() * 1000
