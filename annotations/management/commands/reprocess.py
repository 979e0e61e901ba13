"""Process videos again from their kept sources (after a fix):

    python manage.py reprocess [VIDEO_ID ...] [--failed] [--unblanked] [--centre CODE] [--inline]

Without ids, --failed picks every failed video that is not a duplicate, and --unblanked every
video whose stored source predates blanking (the de-identified upload as it came, burned-in
text included): processing replaces it with the blanked kept source."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotations import services
from annotations.models import Video, VideoStatus
from annotations.selectors import videos_with_unblanked_source


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("video_ids", nargs="*", type=int)
        parser.add_argument("--failed", action="store_true", help="every failed video")
        parser.add_argument("--unblanked", action="store_true",
                            help="every video whose stored source is not blanked yet")
        parser.add_argument("--centre", help="only videos of this centre (code)")
        parser.add_argument("--inline", action="store_true",
                            help="process here instead of queueing for the workers")

    def handle(self, video_ids: list[int], failed: bool, unblanked: bool, centre: str | None,
               inline: bool, **options):
        if not video_ids and not failed and not unblanked:
            raise CommandError("name video ids, or use --failed or --unblanked")
        videos = Video.objects.filter(duplicate_of__isnull=True).order_by("pk")
        if video_ids:
            videos = videos.filter(pk__in=video_ids)
        if failed:
            videos = videos.filter(status=VideoStatus.FAILED)
        if unblanked:
            videos = videos_with_unblanked_source(videos=videos)
        if centre:
            videos = videos.filter(nodule__patient__centre__code=centre)
        problems = 0
        for video in videos:
            try:
                services.video_reprocess(video=video, enqueue=not inline)
            except services.ValidationError as exc:
                problems += 1
                self.stdout.write(self.style.ERROR(f"video {video.pk}: {exc}"))
                continue
            if inline:
                services.video_process(video=video)
                video.refresh_from_db()
                self.stdout.write(f"video {video.pk}: {video.status} {video.failure_reason}")
            else:
                self.stdout.write(f"video {video.pk}: queued")
        if problems:
            raise CommandError(f"{problems} video(s) could not be processed again")
