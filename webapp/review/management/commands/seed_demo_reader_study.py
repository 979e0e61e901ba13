"""A finished reader study over the demo cases, read by simulated readers:

    python manage.py seed_demo_reader_study

Deterministic (seeded); re-running replaces the demo study (webapp/review/demo.py)."""

from django.core.management.base import BaseCommand

from annotations.models import User
from webapp.review.demo import demo_reader_study_seed


class Command(BaseCommand):
    help = "Create the demo's finished reader study with simulated readers (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--centres", default="C1,C2", help="demo centre codes")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, centres: str, seed: int, **options):
        admin = User.objects.filter(username="admin").first()
        study = demo_reader_study_seed(centre_codes=centres.split(","), seed=seed, admin=admin)
        if study is None:
            self.stdout.write("Demo reader study: too few benign or malignant demo cases; "
                              "import the demo cases first.")
            return
        self.stdout.write(f"Demo reader study: {study.cases.count()} cases, "
                          f"{study.readers.count()} simulated readers, {study.status}.")
