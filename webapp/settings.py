"""ThyroCine settings: one module, everything that differs between deployments comes from the
environment.

Development runs on embedded defaults (SQLite, a filesystem Celery broker, an in-memory channel
layer, local media) so that `make demo` needs no server. Production (`DJANGO_DEBUG=false`)
requires a secret key and allowed hosts and turns on every secure-cookie and HTTPS setting, so
that `manage.py check --deploy` is clean. The README's configuration table lists each variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# Runtime state of an embedded deployment (SQLite file, broker folder, media, runs).
VAR_DIR = Path(os.environ.get("THYROCINE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ImproperlyConfigured(f"{name} must be set when DJANGO_DEBUG is false")
    return value


DEBUG = env_bool("DJANGO_DEBUG", True)

if DEBUG:
    SECRET_KEY = os.environ.get(
        "DJANGO_SECRET_KEY", "dev-only-insecure-key-never-use-in-production-0123456789abcdef"
    )
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
else:
    SECRET_KEY = env_required("DJANGO_SECRET_KEY")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DJANGO_DEBUG is false")

CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",  # must precede staticfiles so that runserver serves ASGI
    "webapp.admin_site.PlatformAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "channels",
    "annotations",
    "webapp.portal",
    "webapp.training",
    "webapp.dashboards",
    "webapp.review",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires, so that it sees the outcome of authentication.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.portal.context_processors.navigation",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60"))
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not ":memory:", so that a Celery worker subprocess in the tests sees the same
    # test database as the test process.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    # IMMEDIATE: a transaction takes the write lock when it begins, so a worker and the web
    # process never deadlock upgrading read locks (SQLite answers "database is locked").
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "annotations.User"
AUTHENTICATION_BACKENDS = [
    # django-axes first: it refuses a locked-out username/IP before any password check.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Failed-login throttling (django-axes): lock a username+IP pair after repeated failures.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_HOURS", "0.25"))  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_ENABLED = env_bool("AXES_ENABLED", True)

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # vendor/plotly.min.js from the installed plotly package (never a CDN).
    "webapp.training.staticfiles.PlotlyFinder",
]
# In development WhiteNoise serves straight from the apps' static folders (no collectstatic).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
# Media is never served from a public path: every download goes through a permission-checked
# view. Behind nginx, set MEDIA_X_ACCEL_PREFIX to an `internal` location aliasing MEDIA_ROOT and
# the view answers with X-Accel-Redirect instead of streaming the bytes itself.
MEDIA_X_ACCEL_PREFIX = os.environ.get("MEDIA_X_ACCEL_PREFIX", "")

S3_BUCKET = os.environ.get("S3_BUCKET", "")
if S3_BUCKET:
    # Any S3-compatible store (AWS, MinIO, Ceph) through django-storages; objects stay private
    # and are streamed through the same permission-checked views.
    _media_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": os.environ.get("S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("S3_REGION") or None,
            "access_key": os.environ.get("S3_ACCESS_KEY_ID") or None,
            "secret_key": os.environ.get("S3_SECRET_ACCESS_KEY") or None,
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
else:
    _media_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": "/files/"},
    }
STORAGES = {
    "default": _media_storage,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Redis, Celery, Channels ----------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")

if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": 6 * 3600}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    REALTIME_CROSS_PROCESS = True
else:
    # Embedded default: kombu's filesystem transport needs no server, and a separate worker
    # process still picks the tasks up. Without Redis, workers cannot reach browsers through the
    # channel layer, so pages fall back to polling (REALTIME_CROSS_PROCESS is False).
    BROKER_DIR = Path(os.environ.get("CELERY_FILESYSTEM_BROKER_DIR", VAR_DIR / "broker"))
    for _folder in ("queue", "control"):  # kombu expects them to exist
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    REALTIME_CROSS_PROCESS = False

# Long jobs keep their state in database rows; the result backend is not used.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
# Two queues: `cpu` for video processing and exports, `gpu` for training, inference, heatmaps.
CELERY_TASK_ROUTES = {
    "annotations.*": {"queue": "cpu"},
    "exports.*": {"queue": "cpu"},
    "training.*": {"queue": "gpu"},
    "inference.*": {"queue": "gpu"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Periodic jobs, for deployments that run `celery -A webapp beat` (the demo does not: there
# the pages and every worker start-up run the same check).
CELERY_BEAT_SCHEDULE = {
    "training-reap-stale-runs": {"task": "training.reap_stale", "schedule": 60.0},
    "inference-backfill": {"task": "inference.backfill", "schedule": 300.0},
}

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so that unauthenticated API calls get 401 with a WWW-Authenticate header.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ThyroCine API",
    "DESCRIPTION": (
        "Centre-scoped API for calcified thyroid nodule cases: patients, nodules, ultrasound "
        "videos, pathology and annotations. Authenticate with `Authorization: Token <key>`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI's assets come from the installed package, never a CDN (closed networks).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- Security (production) ------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    if env_bool("BEHIND_TLS_PROXY", True):
        # nginx (or another proxy) terminates TLS and sets this header.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Logging --------------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- ThyroCine ------------------------------------------------------------------------------
THYROCINE = {
    # Upload limit in bytes; larger uploads are refused with a clear message.
    "MAX_UPLOAD_BYTES": int(os.environ.get("MAX_UPLOAD_BYTES", str(4 * 1024**3))),
    # Identified uploads wait here, outside media storage, until they are de-identified.
    "INCOMING_DIR": Path(os.environ.get("THYROCINE_INCOMING_DIR", VAR_DIR / "incoming")),
    # A sweep has at least this many frames; fewer is a still image.
    "MIN_FRAMES": int(os.environ.get("VIDEO_MIN_FRAMES", "8")),
    # Frames larger than this on a side are corrupt headers, not ultrasound.
    "MAX_FRAME_SIDE": int(os.environ.get("VIDEO_MAX_FRAME_SIDE", "4096")),
    # Training clips: (height, width) of every frame, grayscale uint8 (docs/ml-interfaces.md).
    "CLIP_SIZE": tuple(int(v) for v in os.environ.get("CLIP_SIZE", "128,128").split(",")),
    # Frame store: frames per chunk (the player prefetches a chunk at a time) and JPEG quality.
    "FRAME_CHUNK_SIZE": int(os.environ.get("FRAME_CHUNK_SIZE", "32")),
    "FRAME_JPEG_QUALITY": int(os.environ.get("FRAME_JPEG_QUALITY", "90")),
    "THUMBNAIL_WIDTH": 320,
    # Largest body of one PATCH of a resumable upload; the browser client sends 8 MiB chunks.
    "UPLOAD_CHUNK_BYTES": int(os.environ.get("UPLOAD_CHUNK_BYTES", str(64 * 1024**2))),
    # How NIFTP (a low-risk neoplasm, WHO 2022) enters training: "benign", "malignant" or
    # "exclude" (kept, but left out of training like indeterminate nodules).
    "NIFTP_LABEL": os.environ.get("NIFTP_LABEL", "benign"),
}
# Large multipart uploads spill to disk while they arrive: into the private incoming folder,
# like every identified byte, never the system's temporary folder.
THYROCINE["INCOMING_DIR"].mkdir(parents=True, exist_ok=True)
FILE_UPLOAD_TEMP_DIR = str(THYROCINE["INCOMING_DIR"])

# Training runs, the model registry and predictions (webapp/training/conf.py has the defaults).
THYROCINE_TRAINING = {
    # Run directories (checkpoints, logs) and exported snapshots; a shared volume when GPU
    # hosts may resume each other's runs.
    "DIR": Path(os.environ.get("THYROCINE_TRAINING_DIR", VAR_DIR / "training")),
    # A running run stamps its row this often; one silent for STALE_AFTER_SECONDS is failed
    # (its worker died) and can be resumed from its last checkpoint.
    "HEARTBEAT_SECONDS": float(os.environ.get("TRAINING_HEARTBEAT_SECONDS", "2")),
    "STALE_AFTER_SECONDS": float(os.environ.get("TRAINING_STALE_AFTER_SECONDS", "60")),
    "MAX_GPUS": int(os.environ.get("TRAINING_MAX_GPUS", "8")),
    # Queue of training runs: the gpu queue, or one of their own (workers `-Q training`).
    "QUEUE": os.environ.get("TRAINING_QUEUE", "gpu"),
}
