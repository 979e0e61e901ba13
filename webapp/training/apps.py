from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Dataset snapshots, training runs on the gpu queue, the model registry and predictions."""

    name = "webapp.training"
    label = "training"
    verbose_name = "Training"
