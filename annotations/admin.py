"""The admin site, for platform administrators only (see webapp.admin_site). Querysets still
come from the selectors, like every other entry point."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from annotations import selectors
from annotations.models import (
    Annotation,
    AuditEvent,
    Centre,
    CentreMask,
    Membership,
    Nodule,
    Patient,
    ReviewerAssignment,
    User,
    Video,
)
from annotations.permissions import PlatformAction, can_platform


class PlatformAdminOnly(admin.ModelAdmin):
    def has_module_permission(self, request):
        return can_platform(request.user, PlatformAction.ADMINISTER)

    has_view_permission = has_add_permission = has_change_permission = (
        lambda self, request, obj=None: can_platform(request.user, PlatformAction.ADMINISTER)
    )
    has_delete_permission = has_change_permission


@admin.register(User)
class UserAdmin(PlatformAdminOnly, DjangoUserAdmin):
    fieldsets = DjangoUserAdmin.fieldsets + (("ThyroCine", {"fields": ("platform_role",)}),)
    list_display = ("username", "email", "platform_role", "is_active", "last_login")
    list_filter = ("platform_role", "is_active")


@admin.register(Centre)
class CentreAdmin(PlatformAdminOnly):
    list_display = ("code", "name", "created_at")

    def get_queryset(self, request):
        return selectors.centres_visible_to(user=request.user)


@admin.register(Membership)
class MembershipAdmin(PlatformAdminOnly):
    list_display = ("user", "centre", "role")
    list_filter = ("centre", "role")

    def get_queryset(self, request):
        return selectors.memberships_visible_to(user=request.user)


@admin.register(Patient)
class PatientAdmin(PlatformAdminOnly):
    list_display = ("code", "centre", "sex", "age_at_exam")
    list_filter = ("centre",)

    def get_queryset(self, request):
        return selectors.patients_visible_to(user=request.user)


@admin.register(Nodule)
class NoduleAdmin(PlatformAdminOnly):
    list_display = ("code", "patient", "location", "max_diameter_mm")

    def get_queryset(self, request):
        return selectors.nodules_visible_to(user=request.user)


@admin.register(Video)
class VideoAdmin(PlatformAdminOnly):
    list_display = ("pk", "nodule", "status", "frame_count", "uploaded_at")
    list_filter = ("status",)

    def get_queryset(self, request):
        return selectors.videos_visible_to(user=request.user)


@admin.register(CentreMask)
class CentreMaskAdmin(PlatformAdminOnly):
    """Rectangles each centre's stored frames are blanked in (vendor banners inside the
    image); they apply to videos processed (or reprocessed) after the change."""

    list_display = ("centre", "label", "frame_width", "frame_height", "x", "y", "w", "h")
    list_filter = ("centre",)

    def get_queryset(self, request):
        return CentreMask.objects.filter(
            centre__in=selectors.centres_visible_to(user=request.user)
        )


@admin.register(AuditEvent)
class AuditEventAdmin(PlatformAdminOnly):
    """Read-only: the audit log is append-only."""

    list_display = ("at", "username", "centre_code", "action", "object_type", "object_repr")
    list_filter = ("action", "centre_code")

    def get_queryset(self, request):
        return selectors.audit_events_visible_to(user=request.user)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- Annotation workspace (annotations.workspace) --------------------------------------------


@admin.register(ReviewerAssignment)
class ReviewerAssignmentAdmin(PlatformAdminOnly):
    """Members who review annotations at a centre besides its administrators."""

    list_display = ("user", "centre", "created_at")
    list_filter = ("centre",)

    def get_queryset(self, request):
        return ReviewerAssignment.objects.filter(
            centre__in=selectors.centres_visible_to(user=request.user)).select_related(
            "user", "centre")


@admin.register(Annotation)
class AnnotationAdmin(PlatformAdminOnly):
    """Read-only here: content and states change through the workspace, which versions and
    audits every change."""

    list_display = ("pk", "video", "annotator", "is_consensus", "state", "version",
                    "updated_at")
    list_filter = ("state", "is_consensus")
    readonly_fields = [f.name for f in Annotation._meta.fields]
    has_add_permission = has_change_permission = has_delete_permission = (
        lambda self, request, obj=None: False)

    def get_queryset(self, request):
        return selectors.annotations_visible_to(user=request.user)
