"""Pickwise settings, read from the environment (see config/env.py and the README table).

Two modes:
- development (the default): SQLite, media on local disk, an embedded filesystem Celery
  broker, DEBUG on. Nothing else has to run.
- production (``PICKWISE_ENV=production``): ``SECRET_KEY`` is required, DEBUG is off, and
  ``DATABASE_URL`` / ``CELERY_BROKER_URL`` point at PostgreSQL and Redis.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_choice, env_int, env_list, env_str, env_url
from config.secret_key import check_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

# --- mode -------------------------------------------------------------------------------
PICKWISE_ENV = env_choice(
    "PICKWISE_ENV", "development", "development or production; production requires SECRET_KEY",
    ("development", "production"),
)
PRODUCTION = PICKWISE_ENV == "production"
VAR_DIR = Path(env_str("PICKWISE_VAR_DIR", str(BASE_DIR / "var"), "Directory for the embedded defaults' data"))

_DEV_SECRET = "dev-insecure-pickwise-key-change-me-0123456789abcdefghijklmnop"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", "", "Django secret key; required in production") or (
    "" if PRODUCTION else _DEV_SECRET
)
if PRODUCTION:  # private, long, and published nowhere (config/secret_key.py)
    check_secret_key(SECRET_KEY, source_root=BASE_DIR)

DEBUG = env_bool("DEBUG", not PRODUCTION, "Django debug pages; only for local hosts")
ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver", "Comma-separated host names served"
)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "testserver", "0.0.0.0"}  # noqa: S104
if DEBUG and any(host not in _LOCAL_HOSTS and not host.endswith(".localhost") for host in ALLOWED_HOSTS):
    raise ImproperlyConfigured(
        "DEBUG: must be off when ALLOWED_HOSTS names a public host "
        f"({', '.join(h for h in ALLOWED_HOSTS if h not in _LOCAL_HOSTS)})"
    )
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG: must be off when PICKWISE_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "", "Origins (scheme://host) allowed to POST forms")

# --- applications -----------------------------------------------------------------------
INSTALLED_APPS = [
    "config.apps.PickwiseAdminConfig",  # django.contrib.admin, for superusers only (config/admin.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    "auditlog",  # the audit trail's store; services write entries explicitly (core/audit.py)
    # Pickwise, lowest layer first: core <- projects <- generation <- annotate <- rlhf (the loop on top).
    "core",
    "projects",
    "generation",
    "annotate",
    "rlhf",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",  # django-csp's, with the header built once
    "core.middleware.download_disposition",
    "axes.middleware.AxesMiddleware",  # last: turns a login refused by the lockout into its 429
]

if PRODUCTION:  # runserver serves static files in development
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "projects.context_processors.roles",
            ],
        },
    },
]

# --- database ---------------------------------------------------------------------------
_DEFAULT_DB = f"sqlite:///{VAR_DIR / 'pickwise.sqlite3'}"
DATABASE_URL = env_url(
    "DATABASE_URL", _DEFAULT_DB, "postgres://user:pass@host:5432/db in production; SQLite by default",
    schemes=("sqlite", "postgres", "postgresql", "pgsql"),
)
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
except ValueError as exc:  # pragma: no cover - env_url catches the common cases first
    raise ImproperlyConfigured(f"DATABASE_URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
RAWSQL_PREPARED_STATEMENTS = env_bool(
    "DATABASE_PREPARED_STATEMENTS", True,
    "PostgreSQL: prepare the hot plain-SQL statements (core/rawsql.py) once per connection; false behind a "
    "transaction-mode connection pooler that cannot keep prepared statements (PgBouncer before 1.21)",
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "core.login_protection.LockoutBackend",  # refuses locked-out logins before any password check
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- login protection (django-axes, core/login_protection.py) ------------------------------
LOGIN_FAILURE_LIMIT = env_int(
    "LOGIN_FAILURE_LIMIT", 5, "Failed logins for one username (from any address) that lock it out", minimum=1
)
LOGIN_FAILURE_LIMIT_PER_IP = env_int(
    "LOGIN_FAILURE_LIMIT_PER_IP", 20, "Failed logins from one client address (any usernames) that lock it out",
    minimum=1,
)
LOGIN_LOCKOUT_MINUTES = env_int(
    "LOGIN_LOCKOUT_MINUTES", 15, "Minutes without a failed login after which a lockout ends", minimum=1
)
TRUSTED_PROXY_COUNT = env_int(
    "TRUSTED_PROXY_COUNT", 0,
    "Reverse proxies in front of the app that append X-Forwarded-For; 0 = the peer address is the client",
    minimum=0,
)
AXES_HANDLER = "core.login_protection.LockoutHandler"
AXES_FAILURE_LIMIT = "core.login_protection.failure_limit"  # LOGIN_FAILURE_LIMIT
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_COOLOFF_TIME = "core.login_protection.cool_off"  # LOGIN_LOCKOUT_MINUTES
AXES_CLIENT_IP_CALLABLE = "core.login_protection.client_ip"
AXES_LOCKOUT_CALLABLE = "core.login_protection.lockout_response"
# A successful login must not clear failures: axes would clear every attempt from that address,
# guesses at other accounts included, so an attacker with one account could reset their count.
AXES_RESET_ON_SUCCESS = False
AXES_VERBOSE = False  # no start-up banner in every command; failures and lockouts are still logged

# --- audit trail (django-auditlog, core/audit.py): no model is registered, services write entries ---
AUDITLOG_INCLUDE_ALL_MODELS = False
AUDITLOG_DISABLE_REMOTE_ADDR = True  # services write entries, not a middleware that sees the request

# --- i18n / time ------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC", "Time zone for display; storage is always UTC")
USE_I18N = True
USE_TZ = True

# --- static and media -------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media"), "Local media directory (no S3 bucket set)"))

AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME", "", "S3 bucket for media; empty = local disk")
AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL", "", "S3-compatible endpoint (MinIO, R2, ...)")
AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME", "", "S3 region")
AWS_ACCESS_KEY_ID = env_str("AWS_ACCESS_KEY_ID", "", "S3 access key")
AWS_SECRET_ACCESS_KEY = env_str("AWS_SECRET_ACCESS_KEY", "", "S3 secret key")
if AWS_STORAGE_BUCKET_NAME:
    if not (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY):
        raise ImproperlyConfigured(
            "AWS_ACCESS_KEY_ID: S3 media needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    AWS_DEFAULT_ACL = None
    AWS_QUERYSTRING_AUTH = True
    AWS_QUERYSTRING_EXPIRE = 3600
    _media_backend = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {"file_overwrite": True}}
else:
    _media_backend = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _media_backend,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL", "filesystem://", "redis://host:6379/0 in production; embedded broker by default",
    schemes=("redis", "rediss", "filesystem", "memory", "amqp"),
)
CELERY_RESULT_BACKEND = env_str(
    "CELERY_RESULT_BACKEND", "", "Result store; defaults to the Redis broker, or files next to the embedded one"
)
CELERY_VISIBILITY_TIMEOUT = env_int(
    "CELERY_VISIBILITY_TIMEOUT", 7200, "Seconds before Redis redelivers an unacked task", minimum=60
)
CELERY_TASK_TIME_LIMIT = env_int(
    "CELERY_TASK_TIME_LIMIT", 3600, "Hard time limit (s) of a task; below the visibility timeout", minimum=10
)
CELERY_TRAIN_TIME_LIMIT = env_int(
    "CELERY_TRAIN_TIME_LIMIT", 6600, "Hard time limit (s) of a training task", minimum=10
)
if max(CELERY_TASK_TIME_LIMIT, CELERY_TRAIN_TIME_LIMIT) >= CELERY_VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured(
        "CELERY_TASK_TIME_LIMIT: task time limits must stay below CELERY_VISIBILITY_TIMEOUT"
    )
CELERY_BROKER_DIR = VAR_DIR / "broker"
CELERY_FILESYSTEM_POLL_MS = env_int(
    "CELERY_FILESYSTEM_POLL_MS", 50, "How often (ms) a worker looks for new messages in the embedded filesystem broker",
    minimum=10,
)
REAPER_INTERVAL_SECONDS = env_int("REAPER_INTERVAL_SECONDS", 60, "How often beat runs the lease reapers", minimum=5)
# --- background jobs (core/jobs.py): runs, exports, arena generations, loop rounds, imports ---
JOB_LEASE_SECONDS = env_int(
    "JOB_LEASE_SECONDS", 120,
    "Lease (s) of a running run, export, arena generation, round or import; reaped when expired",
    minimum=2,
)
JOB_HEARTBEAT_SECONDS = env_int(
    "JOB_HEARTBEAT_SECONDS", 5, "How often (s) a running job renews its lease and writes its progress", minimum=1
)
if JOB_HEARTBEAT_SECONDS >= JOB_LEASE_SECONDS:
    raise ImproperlyConfigured("JOB_HEARTBEAT_SECONDS: heartbeats must come more often than JOB_LEASE_SECONDS")
JOB_MAX_ATTEMPTS = env_int(
    "JOB_MAX_ATTEMPTS", 3,
    "Times a run, export, arena generation, round or import is started before an expired lease fails it",
    minimum=1,
)

# --- ML ---------------------------------------------------------------------------------
PICKWISE_DEVICE = env_choice(
    "PICKWISE_DEVICE", "auto", "Inference/training device: auto, cuda, mps or cpu", ("auto", "cuda", "mps", "cpu")
)
PICKWISE_MODEL_CACHE_DIR = Path(
    env_str("PICKWISE_MODEL_CACHE_DIR", str(VAR_DIR / "models"), "Where run outputs and hub caches live")
)
PICKWISE_EXPORT_DIR = Path(
    env_str("PICKWISE_EXPORT_DIR", str(VAR_DIR / "exports"), "Where preference exports are written")
)
# Local model directories a user may name (a reward model's backbone); the worker opens no other directory
# a user types. Registered model versions and the shipped presets need no entry here.
PICKWISE_MODEL_DIRS = env_list(
    "PICKWISE_MODEL_DIRS", "",
    "Comma-separated directories under which users may name local model directories (reward backbones); empty: none",
)
EXPORT_MAX_PAIRS = env_int("EXPORT_MAX_PAIRS", 50_000_000, "Refuse exports with more pairs than this", minimum=1)
# Exports asked for with destination "object_store" stream into an S3-compatible bucket (rlhf/datasets/storage.py).
# The endpoint and credentials come from here, never from a request; empty ones fall back to the media bucket's.
EXPORT_STORAGE_URL = env_str(
    "EXPORT_STORAGE_URL", "", "s3://bucket/prefix that exports with destination object_store are written to; empty: none"
)
EXPORT_S3_ENDPOINT_URL = env_str(
    "EXPORT_S3_ENDPOINT_URL", "", "S3-compatible endpoint of EXPORT_STORAGE_URL; empty: AWS_S3_ENDPOINT_URL"
) or AWS_S3_ENDPOINT_URL
EXPORT_S3_REGION_NAME = env_str(
    "EXPORT_S3_REGION_NAME", "", "Region of EXPORT_STORAGE_URL; empty: AWS_S3_REGION_NAME, else us-east-1"
) or AWS_S3_REGION_NAME or "us-east-1"
EXPORT_S3_ACCESS_KEY_ID = env_str(
    "EXPORT_S3_ACCESS_KEY_ID", "", "Access key for EXPORT_STORAGE_URL; empty: AWS_ACCESS_KEY_ID"
) or AWS_ACCESS_KEY_ID
EXPORT_S3_SECRET_ACCESS_KEY = env_str(
    "EXPORT_S3_SECRET_ACCESS_KEY", "", "Secret key for EXPORT_STORAGE_URL; empty: AWS_SECRET_ACCESS_KEY"
) or AWS_SECRET_ACCESS_KEY
EXPORT_DOWNLOAD_URL_SECONDS = env_int(
    "EXPORT_DOWNLOAD_URL_SECONDS", 3600, "How long (s) the signed download link of an object-store export works",
    minimum=60,
)
if EXPORT_STORAGE_URL:
    _store = urlparse(EXPORT_STORAGE_URL)
    if _store.scheme != "s3" or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", _store.netloc or ""):
        raise ImproperlyConfigured(
            f"EXPORT_STORAGE_URL: expected s3://bucket/prefix with a valid bucket name, got {EXPORT_STORAGE_URL!r}"
        )
    if _store.query or _store.params or _store.fragment or "//" in _store.path or ".." in _store.path.split("/"):
        raise ImproperlyConfigured(f"EXPORT_STORAGE_URL: a plain s3://bucket/prefix, got {EXPORT_STORAGE_URL!r}")
    if not (EXPORT_S3_ACCESS_KEY_ID and EXPORT_S3_SECRET_ACCESS_KEY):
        raise ImproperlyConfigured(
            "EXPORT_S3_ACCESS_KEY_ID: exports to EXPORT_STORAGE_URL need EXPORT_S3_ACCESS_KEY_ID and "
            "EXPORT_S3_SECRET_ACCESS_KEY (or the AWS_ ones)"
        )
# --- distributed training (rlhf/runs/distributed.py): a run with num_processes > 1 --------------
TRAIN_CUDA_VISIBLE_DEVICES = env_str(
    "TRAIN_CUDA_VISIBLE_DEVICES", "",
    "GPUs (CUDA_VISIBLE_DEVICES) a gpu-train worker's training processes use; empty: the worker's own",
)
TRAIN_WORKER_CONCURRENCY = env_int(
    "TRAIN_WORKER_CONCURRENCY", 1,
    "Training tasks a worker consuming only gpu-train runs at once (unless its command line sets --concurrency)",
    minimum=1,
)
TRAIN_MAX_PROCESSES = env_int(
    "TRAIN_MAX_PROCESSES", 0,
    "Most training processes a run may start on one machine; 0: the GPUs in TRAIN_CUDA_VISIBLE_DEVICES, "
    "else the CPU count on a CPU device", minimum=0,
)
TRAIN_MAIN_PROCESS_IP = env_str(
    "TRAIN_MAIN_PROCESS_IP", "",
    "This gpu-train worker's address as the other machines reach it: the rendezvous (machine rank 0) of its runs "
    "over several machines; required for them",
)
TRAIN_MAIN_PROCESS_PORT = env_int(
    "TRAIN_MAIN_PROCESS_PORT", 29500, "Rendezvous port of runs over several machines (on the main machine)", minimum=1
)
TRAIN_NODE_QUEUE = env_str(
    "TRAIN_NODE_QUEUE", "gpu-train-node",
    "Queue of the other machines' parts of a run over several machines (one node worker per machine consumes it)",
)
TRAIN_NODE_LEASE_SECONDS = env_int(
    "TRAIN_NODE_LEASE_SECONDS", 30,
    "A machine of a run over several machines whose node worker has not heartbeaten for this long is dead: the run "
    "fails", minimum=2,
)
if JOB_HEARTBEAT_SECONDS >= TRAIN_NODE_LEASE_SECONDS:
    raise ImproperlyConfigured("TRAIN_NODE_LEASE_SECONDS: must be longer than JOB_HEARTBEAT_SECONDS")
TRAIN_RENDEZVOUS_TIMEOUT = env_int(
    "TRAIN_RENDEZVOUS_TIMEOUT", 600,
    "Seconds the machines of a run over several machines have to join it (a node worker takes each part and "
    "every machine's processes meet at the rendezvous) before the run fails", minimum=1,
)
TRAIN_STOP_GRACE_SECONDS = env_int(
    "TRAIN_STOP_GRACE_SECONDS", 60,
    "Seconds the training processes of a cancelled run have to checkpoint after SIGTERM before SIGKILL", minimum=1,
)

# --- task imports with candidate images (annotate/workflow/imports/) -----------------------
_import_root = env_str(
    "PICKWISE_IMPORT_ROOT", "", "Folder on the server whose files imports may name by path; empty = none"
)
IMPORT_ROOT = Path(_import_root).resolve() if _import_root else None
IMPORT_MAX_ROWS = env_int("IMPORT_MAX_ROWS", 100_000, "Most tasks one import may create", minimum=1)
IMPORT_INLINE_MAX_ROWS = env_int(
    "IMPORT_INLINE_MAX_ROWS", 200,
    "Imports up to this many tasks (and no URL images) run in the request; larger ones on a worker", minimum=0,
)
IMPORT_MAX_IMAGE_BYTES = env_int(
    "IMPORT_MAX_IMAGE_BYTES", 20 * 1024 * 1024, "Largest image file (bytes) an import accepts", minimum=1024
)
IMPORT_MAX_IMAGE_PIXELS = env_int(
    "IMPORT_MAX_IMAGE_PIXELS", 40_000_000, "Largest image (width x height) an import accepts", minimum=64
)
IMPORT_URL_TIMEOUT_SECONDS = env_int(
    "IMPORT_URL_TIMEOUT_SECONDS", 15, "Time limit (s) of fetching one image URL during an import", minimum=1
)
IMPORT_MAX_FILES = env_int(
    "IMPORT_MAX_FILES", 10_000, "Most files one upload may carry (a folder of images)", minimum=100
)
DATA_UPLOAD_MAX_NUMBER_FILES = IMPORT_MAX_FILES

# --- generation (generation/) -------------------------------------------------------------
GENERATION_BATCH_LIMIT = env_int(
    "GENERATION_BATCH_LIMIT", 8, "Most images a gpu worker renders in one coalesced pipeline call", minimum=1
)
GENERATION_DRAIN_CLAIMS = env_int(
    "GENERATION_DRAIN_CLAIMS", 8,
    "Queued jobs of the same model version a gpu worker claims after its own, before its next task (0: none)",
    minimum=0,
)
GENERATION_PIPELINE_CACHE_SIZE = env_int(
    "GENERATION_PIPELINE_CACHE_SIZE", 1, "Base pipelines a gpu worker process keeps loaded (LRU)", minimum=1
)
GENERATION_LEASE_SECONDS = env_int(
    "GENERATION_LEASE_SECONDS", 300, "Lease (s) of a running job; renewed by progress, reaped when expired",
    minimum=2,
)
GENERATION_PRELOAD = env_bool(
    "GENERATION_PRELOAD", True,
    "A gpu worker loads the model versions projects offer when it starts, and warms them up with a one-step render",
)
GENERATION_TORCH_THREADS = env_int(
    "GENERATION_TORCH_THREADS", 0, "CPU threads torch may use in a gpu worker process; 0 = torch's default",
    minimum=0,
)
GENERATION_MAX_ATTEMPTS = env_int(
    "GENERATION_MAX_ATTEMPTS", 3, "Times a job is started before an expired lease fails it", minimum=1
)
GENERATION_MAX_IMAGES_PER_JOB = env_int(
    "GENERATION_MAX_IMAGES_PER_JOB", 8, "Most images one generation request may ask for", minimum=1
)
GENERATION_MAX_QUEUED_JOBS_PER_USER = env_int(
    "GENERATION_MAX_QUEUED_JOBS_PER_USER", 10, "Most unfinished generation jobs one user may have", minimum=1
)
GENERATION_RATE_LIMIT_PER_MINUTE = env_int(
    "GENERATION_RATE_LIMIT_PER_MINUTE", 30, "Most generation jobs one user may create per minute", minimum=1
)
GENERATION_MAX_PROMPT_CHARS = env_int(
    "GENERATION_MAX_PROMPT_CHARS", 1000, "Longest prompt (characters) a generation job accepts", minimum=1
)
GENERATION_MAX_IMAGE_SIDE = env_int(
    "GENERATION_MAX_IMAGE_SIDE", 1024, "Largest width or height (pixels) a generation job accepts", minimum=8
)
GENERATION_EDIT_MAX_UPLOAD_BYTES = env_int(
    "GENERATION_EDIT_MAX_UPLOAD_BYTES", 10_000_000,
    "Largest source image or mask file (bytes) an image-editing job accepts", minimum=1024,
)
GENERATION_EDIT_OUTPAINT_MAX_PER_SIDE = env_int(
    "GENERATION_EDIT_OUTPAINT_MAX_PER_SIDE", 256, "Most pixels an outpainting job may add on one side", minimum=8
)
GENERATION_EDIT_STRENGTH_DEFAULT_PERCENT = env_int(
    "GENERATION_EDIT_STRENGTH_DEFAULT_PERCENT", 75,
    "Default strength (percent, 1-100) of image-to-image and inpainting jobs", minimum=1,
)

# --- DRF --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first, so an unauthenticated API call gets 401 with WWW-Authenticate.
        "core.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # page and page_size are read by core.parsing (400 for "", "abc", "²", 0) and documented with bounds
    "DEFAULT_PAGINATION_CLASS": "core.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.JSONParser",  # refuses bodies nested deeper than core.parsing.JSON_MAX_DEPTH
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",  # documents every operation's errors
    "EXCEPTION_HANDLER": "core.api.exception_handler",
}
API_DOCS_PUBLIC = env_bool(
    "API_DOCS_PUBLIC", not PRODUCTION,
    "Serve /api/schema/ and /api/docs/ to anonymous callers (default false in production: signed-in users only)",
)
# Webhook deliveries and URL imports go only to public addresses unless this is on (core/outbound.py).
OUTBOUND_ALLOW_PRIVATE_ADDRESSES = env_bool(
    "OUTBOUND_ALLOW_PRIVATE_ADDRESSES", False,
    "Let webhooks and URL imports reach private, loopback and link-local addresses (tests, on-premise use)",
)

# --- webhooks (projects/webhooks/) ------------------------------------------------------------
SITE_URL = env_url(
    "SITE_URL", "http://127.0.0.1:8000",
    "The app's public address (scheme://host[:port]); webhook payloads link to it", schemes=("http", "https"),
).rstrip("/")
WEBHOOK_TIMEOUT_SECONDS = env_int(
    "WEBHOOK_TIMEOUT_SECONDS", 10, "Seconds a webhook endpoint has to connect and answer", minimum=1
)
if WEBHOOK_TIMEOUT_SECONDS > 300:  # a delivery task's time limit (4x this + 60 s) stays far below the visibility timeout
    raise ImproperlyConfigured("WEBHOOK_TIMEOUT_SECONDS: at most 300 (a receiver should answer in seconds)")
WEBHOOK_RETRY_BASE_SECONDS = env_int(
    "WEBHOOK_RETRY_BASE_SECONDS", 10,
    "First wait (s) before retrying a failed webhook delivery; doubles each time (with jitter), at most an hour",
    minimum=1,
)
WEBHOOK_RETRY_FOR_SECONDS = env_int(
    "WEBHOOK_RETRY_FOR_SECONDS", 86400, "How long (s) after an event its delivery is retried before it fails",
    minimum=1,
)
WEBHOOK_DISABLE_AFTER_FAILURES = env_int(
    "WEBHOOK_DISABLE_AFTER_FAILURES", 5,
    "Deliveries in a row that failed for good after which an endpoint is disabled and its admins told",
    minimum=1,
)
WEBHOOK_LOG_DAYS = env_int("WEBHOOK_LOG_DAYS", 30, "Days finished webhook deliveries stay in the log", minimum=1)
WEBHOOK_QUEUE = env_str("WEBHOOK_QUEUE", "default", "Celery queue webhook deliveries are sent from").strip()
if not WEBHOOK_QUEUE:
    raise ImproperlyConfigured("WEBHOOK_QUEUE: must name a Celery queue")

# --- email (optional: notices such as a disabled webhook endpoint) --------------------------------
EMAIL_HOST = env_str("EMAIL_HOST", "", "SMTP server for notices to admins; empty = no email")
EMAIL_PORT = env_int("EMAIL_PORT", 587, "SMTP port", minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "", "SMTP user name")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "", "SMTP password")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True, "STARTTLS to the SMTP server")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "pickwise@localhost", "Sender address of notices")
EMAIL_TIMEOUT = 30

SPECTACULAR_SETTINGS = {
    "TITLE": "Pickwise API",
    "SERVE_PERMISSIONS": ["core.api.ApiDocsPermission"],
    "DESCRIPTION": "Rank generated images, export preferences, train reward models and fine-tune.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a ``status`` field; name each enum after its model.
    "ENUM_NAME_OVERRIDES": {
        "AnnotationTemplateVersionStatus": "annotate.models.AnnotationTemplateVersion.Status",
        "JobStatusEnum": "generation.models.JobStatus",
        "AnnotationStatusEnum": "annotate.models.AnnotationStatus",
        "AssignmentStatusEnum": "annotate.models.AssignmentStatus",
        "ExportFormatEnum": "rlhf.models.PreferenceExport.Format",
        "PromptFileFormatEnum": ["csv", "jsonl", "txt"],
        "WebhookDeliveryStatusEnum": "projects.models.DeliveryStatus",
    },
}

# --- security (production) --------------------------------------------------------------
_ssl_redirect = env_bool("SECURE_SSL_REDIRECT", True, "Redirect HTTP to HTTPS (production only)")
_hsts_seconds = env_int("SECURE_HSTS_SECONDS", 31536000, "HSTS max-age (production only)", minimum=0)
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = _ssl_redirect
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
    SECURE_HSTS_SECONDS = _hsts_seconds
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- response headers (both modes) ------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts and styles only from the app's own static files,
# no inline code or style attributes, no plugins, no framing. Images may also come from the S3
# media bucket (generated images redirect to signed URLs there) and from CSP_EXTRA_IMG_SRC.
CSP_EXTRA_IMG_SRC = env_list(
    "CSP_EXTRA_IMG_SRC", "", "More origins images may load from (comma-separated), besides the app and its S3 bucket"
)
_media_origins: list[str] = []
if AWS_STORAGE_BUCKET_NAME:
    if AWS_S3_ENDPOINT_URL:
        _endpoint = urlparse(AWS_S3_ENDPOINT_URL)
        _media_origins = [f"{_endpoint.scheme}://{_endpoint.netloc}", f"{_endpoint.scheme}://*.{_endpoint.netloc}"]
    else:
        _regional = f"s3.{AWS_S3_REGION_NAME}.amazonaws.com" if AWS_S3_REGION_NAME else "s3.amazonaws.com"
        _media_origins = [f"https://{AWS_STORAGE_BUCKET_NAME}.{_regional}", f"https://{_regional}",
                          f"https://{AWS_STORAGE_BUCKET_NAME}.s3.amazonaws.com"]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:", *_media_origins, *CSP_EXTRA_IMG_SRC],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO", "Root log level")},
}
