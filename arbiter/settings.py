"""Arbiter's one settings module: every value comes from the environment, with the embedded defaults.

Embedded (nothing set): SQLite in var/, a Celery broker on kombu's filesystem transport in var/, the
in-memory channel layer. Production and tests: DATABASE_URL=postgres://..., REDIS_URL=redis://...
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from arbiter.env import database_from_url, env_bool, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("ARBITER_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)
# The embedded default key is only for a laptop: with DEBUG off and no SECRET_KEY, check --deploy says so.
SECRET_KEY = env_str("SECRET_KEY", "django-insecure-arbiter-embedded-default-set-SECRET_KEY-in-production")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Base URL that engine subprocesses and remote scripts use to reach the ingest API.
ARBITER_PUBLIC_URL = env_str("ARBITER_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
ARTIFACT_ROOT = env_path("ARTIFACT_ROOT", VAR_DIR / "artifacts")
# Where artifacts live: empty = the local ARTIFACT_ROOT (embedded); s3://bucket/prefix for any S3-compatible
# bucket (credentials from the standard AWS_* variables, endpoint from ARTIFACT_S3_ENDPOINT_URL).
ARTIFACT_STORE_URL = env_str("ARTIFACT_STORE_URL", "").rstrip("/")
ARTIFACT_S3_ENDPOINT_URL = env_str("ARTIFACT_S3_ENDPOINT_URL", "")
# The endpoint browsers reach the bucket by, for signed download URLs (default: ARTIFACT_S3_ENDPOINT_URL).
ARTIFACT_S3_PUBLIC_URL = env_str("ARTIFACT_S3_PUBLIC_URL", "")
# Folders on the GPU hosts an admin opens to every researcher's runs (shared base models, public datasets).
ARBITER_MODEL_ROOTS = env_list("ARBITER_MODEL_ROOTS", [])
ARBITER_DATASET_ROOTS = env_list("ARBITER_DATASET_ROOTS", [])

INSTALLED_APPS = [
    "daphne",  # before staticfiles: its runserver serves ASGI (websockets) in development
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "channels",
    "django_htmx",
    "template_partials",
    "arbiter.accounts",
    "arbiter",
    "training",
    "evaluation",
    "loop",
    "artifacts",
    "workers",
]

# Under ASGI (arbiter.asgi_handler) the three above the session run on the event loop and everything from
# the session down runs synchronously in one call on the request's thread.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "arbiter.query_nul.refuse_nul_in_query",  # ?x=%00 is a 400 naming x, never a 500 in a filter or path check
    "servestatic.middleware.ServeStaticMiddleware",  # WhiteNoise's ASGI-native fork: files without a thread
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes requires: turns a login refused for too many failures into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "arbiter.urls"
ASGI_APPLICATION = "arbiter.asgi.application"
WSGI_APPLICATION = "arbiter.wsgi.application"

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
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
# Connections each process may hold to PostgreSQL (0 = no pool: persistent per-thread connections).
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 16)
DATABASES = {"default": database_from_url(DATABASE_URL, base_dir=BASE_DIR, pool_max_size=DATABASE_POOL_MAX_SIZE)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
# The cached backend first: sessions resolve their user from the cache. ModelBackend stays listed so
# sessions created before the switch (which name it) remain valid.
# django-axes' backend first: it refuses a locked-out account or address before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "arbiter.accounts.backends.CachedModelBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Login throttling (django-axes; README "Security model") -------------------------------------------
# LOGIN_FAILURE_LIMIT failed logins within LOGIN_COOLOFF_MINUTES lock out the account (whatever address
# they came from) and, separately, the address (whatever accounts it tried), until the failures are
# LOGIN_COOLOFF_MINUTES old; a failure while locked out starts the cool-off again. GitLab's defaults:
# 10 attempts, 10 minutes. Attempts live in the database (SQLite or PostgreSQL alike), so every web
# process sees them and an admin unlocks by deleting them (Admin > Axes > Access attempts).
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 10))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
# A success must not wipe the address's failures: an attacker with an account of their own could
# otherwise log into it every few guesses to reset the per-address count.
AXES_RESET_ON_SUCCESS = False
# The address is the ASGI server's client address, never a header read here: uvicorn replaces it with
# the X-Forwarded-For hop added by a proxy it trusts (FORWARDED_ALLOW_IPS, README) and ignores the
# header from anyone else. Explicit, so that installing django-ipware changes nothing.
AXES_CLIENT_IP_CALLABLE = "arbiter.accounts.throttling.client_address"
AXES_LOCKOUT_CALLABLE = "arbiter.accounts.throttling.lockout_response"
AXES_VERBOSE = False  # no banner on every manage.py command; each failure and lockout is still logged

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # the static server warns at start-up when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed + hashed in production (collectstatic); plain in DEBUG and tests so no manifest is needed.
    "staticfiles": {"BACKEND": env_str("STATICFILES_BACKEND", "django.contrib.staticfiles.storage.StaticFilesStorage")},
}

# --- Redis: broker, channel layer, cache. Empty => embedded mode, no server needed. ---
REDIS_URL = env_str("REDIS_URL", "")
EMBEDDED = REDIS_URL == ""

CHANNEL_LAYERS: dict[str, dict[str, Any]]
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any]
if EMBEDDED:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # Every file the broker writes lives under VAR_DIR: kombu's filesystem transport keeps its
    # exchange tables (Celery's pidbox/control broadcast included) in `control_folder`, which is
    # relative to the current directory unless set.
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_RESULT_BACKEND = f"file://{VAR_DIR / 'results'}"
    (VAR_DIR / "results").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # channels_redis' pub/sub layer: a group message is one PUBLISH; each web process receives it once and
    # hands it to its sockets in memory. With the list-based core layer every socket's copy was its own
    # BZPOPMIN round trip, one after another in each process: at 50 dashboards, most of the live p99
    # (bench/bench_runs.py (c)). Delivery is at most once, all a socket needs (a hint: pages repair gaps
    # from `seq`); what waits for a slow browser is bounded by the consumer's Coalescer, which takes each
    # message off the layer's queue at once. Pub/sub ignores Redis database numbers, so the prefix carries
    # it: two deployments or test runs on one Redis server, on different databases, never hear each other.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": f"arbiter.{urlparse(REDIS_URL).path.strip('/') or '0'}.",
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

# --- E-mail (password reset links). Embedded: printed on the console of `make run`; otherwise SMTP. ---
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if EMBEDDED else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
EMAIL_FILE_PATH = env_path("EMAIL_FILE_PATH", VAR_DIR / "mail")  # only for EMAIL_BACKEND=...filebased...
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "arbiter@localhost")
# How long a password reset link stays valid (Django's default is 3 days; a day is plenty).
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 24 * 3600)
# Reset e-mails sent per hour for one typed address, and reset requests per hour from one client address:
# past either, the form answers as usual and sends nothing (no mail-bombing a colleague through us).
PASSWORD_RESET_MAILS_PER_HOUR = env_int("PASSWORD_RESET_MAILS_PER_HOUR", 3)
PASSWORD_RESET_REQUESTS_PER_HOUR = env_int("PASSWORD_RESET_REQUESTS_PER_HOUR", 20)

CACHES: dict[str, dict[str, Any]]
if EMBEDDED:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"pool_class": "arbiter.cache.SharedConnectionPool"},
        }
    }
# Sessions read from the cache, written through to the database: one query fewer on every request.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "sweep-lost-runs": {"task": "training.sweep_lost_runs", "schedule": 30.0},
    "release-expired-leases": {"task": "evaluation.release_expired_leases", "schedule": 60.0},
    "prune-metric-keys": {"task": "training.prune_metric_keys", "schedule": 3600.0},
    "sweep-stale-sample-jobs": {"task": "loop.sweep_stale_sample_jobs", "schedule": 60.0},
}
# Distinct metric names one run may log; a batch past it is refused whole with a 400 naming `key`.
RUN_MAX_METRIC_KEYS = env_int("RUN_MAX_METRIC_KEYS", 1000)
# Seconds without a heartbeat before the sweep marks a running run as lost.
RUN_HEARTBEAT_TIMEOUT = env_int("RUN_HEARTBEAT_TIMEOUT", 60)
# Study uploads larger than this (bytes) are read by a Celery worker with a progress bar, not in the request.
EVALUATION_IMPORT_BACKGROUND_BYTES = env_int("EVALUATION_IMPORT_BACKGROUND_BYTES", 4 * 1024 * 1024)
# Queues a researcher may launch runs onto (one per GPU node pool).
ARBITER_RUN_QUEUES = env_list("ARBITER_RUN_QUEUES", ["gpu"])
# Seconds between SIGTERM and SIGKILL when a run is cancelled.
RUN_CANCEL_GRACE_S = env_int("RUN_CANCEL_GRACE_S", 10)
# Metric batches commit with synchronous_commit=off: a PostgreSQL crash may lose the last few hundred ms of
# acknowledged points (never logs, status or checkpoints). True makes metric commits wait for the WAL flush.
METRICS_SYNCHRONOUS_COMMIT = env_bool("METRICS_SYNCHRONOUS_COMMIT", False)
# GPU slot of this worker process: becomes the engine's CUDA_VISIBLE_DEVICES ("" = CPU only).
ARBITER_GPU_SLOT = env_str("ARBITER_GPU_SLOT", "")

# Open websockets re-decide access at least this often (and at once when a logout, a user edit or an
# unshare is announced): the longest a socket may stream after a change made behind the signals' back.
LIVE_ACCESS_RECHECK_S: float = float(env_int("LIVE_ACCESS_RECHECK_S", 5))

# --- Request body limits, enforced in front of Django (arbiter/request_limits.py) -----------------
# A body over its route's limit is refused (413) from its Content-Length, or the moment a streamed
# body passes it, before authentication and before Django spools anything. A body larger than
# FILE_UPLOAD_MAX_MEMORY_SIZE (what Django keeps in memory, 2.5 MB) must come with a credential (a
# session, an API key, the run's own token), checked before any of it is read: a stranger's body
# never reaches disk. The reverse proxy should enforce the same limits (README, "Production").
_MiB = 2**20
# Ingest batches: the API refuses more than 32 MiB after decompression too (training/api.py).
API_MAX_REQUEST_BYTES = env_int("API_MAX_REQUEST_BYTES", 32 * _MiB)
# Study item files (JSONL/CSV/ST-WebAgentBench): large by nature; imported in the background.
STUDY_UPLOAD_MAX_BYTES = env_int("STUDY_UPLOAD_MAX_BYTES", 512 * _MiB)
# Every other route (forms, admin): Django's DATA_UPLOAD_MAX_MEMORY_SIZE still bounds form fields.
REQUEST_BODY_MAX_BYTES = env_int("REQUEST_BODY_MAX_BYTES", 10 * _MiB)
# First match wins; paths as the ASGI server sees them.
REQUEST_BODY_LIMITS: list[tuple[str, int]] = [
    (r"^/api/runs/", API_MAX_REQUEST_BYTES),
    (r"^/studies/\d+/items/upload/$", STUDY_UPLOAD_MAX_BYTES),
    (r"^/api/studies/", STUDY_UPLOAD_MAX_BYTES),
]

# --- Security: secure by default when DEBUG is off (check --deploy is clean with HTTPS settings on). ---
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
_HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = _HTTPS
CSRF_COOKIE_SECURE = _HTTPS
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _HTTPS)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _HTTPS
SECURE_HSTS_PRELOAD = _HTTPS
if _HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS: list[str] = []

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Serve static files straight from static/ (no collectstatic step for the embedded quick start);
# production images run collectstatic and may set STATICFILES_BACKEND to a manifest storage.
SERVESTATIC_USE_FINDERS = env_bool("SERVESTATIC_USE_FINDERS", True)
