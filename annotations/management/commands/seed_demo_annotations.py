"""Annotate the demo videos from the synthetic generator's ground truth:

    python manage.py seed_demo_annotations CASES_DIR

CASES_DIR holds `manifest.csv` and `truth/*.npz` (python -m ml.synthetic). Demo centres C1 and
C2: their annotator annotates, their administrator reviews (annotations.demo_annotations).
Idempotent; videos not imported yet are skipped (run it again after import_cases)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from annotations.demo_annotations import demo_annotations_seed
from annotations.models import User

DEMO_PEOPLE = {"C1": ("c1annotator", "c1admin"), "C2": ("c2annotator", "c2admin")}


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("cases_dir", type=Path)

    def handle(self, cases_dir: Path, **options):
        users = {u.username: u for u in User.objects.filter(
            username__in=[name for pair in DEMO_PEOPLE.values() for name in pair])}
        people = {code: {"annotator": users[a], "reviewer": users[r]}
                  for code, (a, r) in DEMO_PEOPLE.items() if a in users and r in users}
        counts = demo_annotations_seed(cases_dir=cases_dir, people=people)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
        self.stdout.write(f"Demo annotations: {summary}")
