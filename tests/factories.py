"""factory_boy factories for the clinical data model."""

import hashlib

import factory
from factory.django import DjangoModelFactory

from annotations import models


class UserFactory(DjangoModelFactory):
    class Meta:
        model = models.User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-test-123")


class CentreFactory(DjangoModelFactory):
    class Meta:
        model = models.Centre
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"T{n}")
    name = factory.LazyAttribute(lambda o: f"Test hospital {o.code}")


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = models.Membership

    user = factory.SubFactory(UserFactory)
    centre = factory.SubFactory(CentreFactory)
    role = models.CentreRole.ANNOTATOR


class PatientFactory(DjangoModelFactory):
    class Meta:
        model = models.Patient

    centre = factory.SubFactory(CentreFactory)
    code = factory.Sequence(lambda n: f"P{n:04d}")
    sex = models.Sex.FEMALE
    age_at_exam = 47


class NoduleFactory(DjangoModelFactory):
    class Meta:
        model = models.Nodule

    patient = factory.SubFactory(PatientFactory)
    code = factory.Sequence(lambda n: f"N{n}")
    max_diameter_mm = 12


class VideoFactory(DjangoModelFactory):
    class Meta:
        model = models.Video

    nodule = factory.SubFactory(NoduleFactory)
    sha256 = factory.Sequence(lambda n: hashlib.sha256(f"video{n}".encode()).hexdigest())
    status = models.VideoStatus.READY
    container = "mp4"
    frame_count = 48


class PathologyFactory(DjangoModelFactory):
    class Meta:
        model = models.Pathology

    nodule = factory.SubFactory(NoduleFactory)
    outcome = models.PathologyOutcome.MALIGNANT
    diagnosis = models.Diagnosis.PAPILLARY_CARCINOMA
    source = models.PathologySource.SURGERY
