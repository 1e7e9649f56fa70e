"""Production serving: ``gunicorn -c python:plugin.gunicorn_conf`` (or the checkout's ``gunicorn.conf.py``).

Web processes only verify, record and enqueue; every setting below can be overridden on the
command line or with GUNICORN_CMD_ARGS.
"""

import os

__all__ = [
    "accesslog", "bind", "errorlog", "graceful_timeout", "keepalive", "max_requests", "max_requests_jitter",
    "threads", "timeout", "worker_class", "workers", "wsgi_app",
]  # fmt: skip

wsgi_app = "plugin.wsgi:create()"
bind = os.environ.get("KLARNA_APP_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("KLARNA_APP_WEB_THREADS", "8"))
timeout = 30  # Saleor waits 20 s at most
graceful_timeout = 20  # SIGTERM: finish in-flight requests, then exit
keepalive = 5
max_requests = 10000
max_requests_jitter = 1000
accesslog = None
errorlog = "-"
