"""`make demo`'s model, started in the background once the demo serves:

    python manage.py demo_model

Waits for the demo videos to be processed, freezes a snapshot, trains a small irv2_cam in
the training worker, promotes it and waits for every video's prediction (webapp/training/
demo.py). Stops when the demo stops (its parent process goes away)."""

import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.training.demo import DemoStopped, demo_model


class Command(BaseCommand):
    help = "Train, promote and apply the demo's model (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--folder", type=Path, default=None,
                            help="where top-up synthetic cases are rendered "
                                 "(default VAR_DIR/demo-training-cases)")
        parser.add_argument("--timeout", type=float, default=3600.0)

    def handle(self, *args, folder: Path | None, timeout: float, **options):
        parent = os.getppid()
        folder = folder or Path(settings.VAR_DIR) / "demo-training-cases"

        def log(message: str) -> None:
            self.stdout.write(f"demo model: {message}")
            sys.stdout.flush()

        try:
            demo_model(folder=folder, log=log, timeout=timeout,
                       alive=lambda: os.getppid() == parent)
        except DemoStopped as exc:
            raise CommandError(str(exc)) from exc
