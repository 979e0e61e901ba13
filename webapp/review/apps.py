from django.apps import AppConfig


class ReviewConfig(AppConfig):
    """Reader studies: readers read cases unaided and AI-aided; MRMC analysis of the change."""

    name = "webapp.review"
    label = "review"
    verbose_name = "Reader studies"
