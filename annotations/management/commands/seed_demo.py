from django.core.management.base import BaseCommand

from annotations.demo import DEMO_PASSWORD, demo_accounts_seed


class Command(BaseCommand):
    help = "Create the demo centres and accounts (idempotent) and print the logins."

    def handle(self, *args, **options):
        accounts = demo_accounts_seed()
        self.stdout.write(self.style.SUCCESS(f"Demo logins (password for all: {DEMO_PASSWORD})"))
        for account in accounts:
            self.stdout.write(f"  {account.username:<14} {account.description}")
