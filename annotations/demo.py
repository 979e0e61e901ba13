"""Demo accounts and centres for `make demo` and the browser tests (one definition for both)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from annotations.models import Centre, CentreRole, Membership, PlatformRole, User

DEMO_PASSWORD = "thyrocine-demo"

DEMO_CENTRES = [
    ("C1", "Riverside University Hospital"),
    ("C2", "Northgate General Hospital"),
]


@dataclass(frozen=True)
class DemoAccount:
    username: str
    full_name: str
    platform_role: str = PlatformRole.NONE
    centre: str = ""
    centre_role: str = ""

    @property
    def description(self) -> str:
        if self.platform_role:
            return PlatformRole(self.platform_role).label
        return f"{CentreRole(self.centre_role).label} at {self.centre}"


DEMO_ACCOUNTS = [
    DemoAccount("admin", "Ada Admin", platform_role=PlatformRole.PLATFORM_ADMIN),
    DemoAccount("mlengineer", "Max Engineer", platform_role=PlatformRole.ML_ENGINEER),
    DemoAccount("c1admin", "Chen Lead", centre="C1", centre_role=CentreRole.CENTRE_ADMIN),
    DemoAccount("c1annotator", "Ana Tator", centre="C1", centre_role=CentreRole.ANNOTATOR),
    DemoAccount("c1reader", "Rita Reader", centre="C1", centre_role=CentreRole.READER),
    DemoAccount("c2annotator", "Bo Marker", centre="C2", centre_role=CentreRole.ANNOTATOR),
    DemoAccount("c2admin", "Dana Head", centre="C2", centre_role=CentreRole.CENTRE_ADMIN),
]


@transaction.atomic
def demo_accounts_seed(*, password: str = DEMO_PASSWORD) -> list[DemoAccount]:
    """Create (or reset) the demo centres and accounts. Idempotent."""
    centres = {}
    for code, name in DEMO_CENTRES:
        centres[code], _ = Centre.objects.update_or_create(code=code, defaults={"name": name})
    for account in DEMO_ACCOUNTS:
        first, _, last = account.full_name.partition(" ")
        user, _ = User.objects.update_or_create(
            username=account.username,
            defaults={
                "first_name": first,
                "last_name": last,
                "platform_role": account.platform_role,
                "is_active": True,
            },
        )
        user.set_password(password)
        user.save()
        if account.centre:
            Membership.objects.update_or_create(
                user=user, centre=centres[account.centre], defaults={"role": account.centre_role}
            )
    return DEMO_ACCOUNTS
