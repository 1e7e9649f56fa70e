"""Production serving: ``gunicorn -c python:plugin.gunicorn_conf`` (or the checkout's ``gunicorn.conf.py``).

Web processes only verify, record and enqueue. Requests are read by gunicorn's asyncio worker, so
clients that send their headers or body slowly cost a coroutine each, not a thread: 40 such
connections once made ``/healthz`` and every webhook unreachable under the threaded worker
(issue 11, item 6). A complete request runs the Flask app in a pool of KLARNA_APP_WEB_THREADS
threads (plugin/asgi.py). In production, put a buffering proxy in front as gunicorn recommends
(deploy/nginx.conf: header and body timeouts, TLS). Every setting below can be overridden on the
command line or with GUNICORN_CMD_ARGS.
"""

import os

__all__ = [
    "accesslog", "asgi_lifespan", "bind", "errorlog", "graceful_timeout", "keepalive",
    "limit_request_field_size", "limit_request_fields", "limit_request_line", "max_requests",
    "max_requests_jitter", "timeout", "worker_class", "worker_connections", "workers", "wsgi_app",
]  # fmt: skip

wsgi_app = "plugin.asgi:create()"
bind = os.environ.get("KLARNA_APP_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "asgi"
worker_connections = int(os.environ.get("KLARNA_APP_WEB_CONNECTIONS", "1000"))  # open connections per worker
asgi_lifespan = "on"
timeout = 30  # Saleor waits 20 s at most
graceful_timeout = 20  # SIGTERM: finish in-flight requests, then exit
keepalive = 5
# gunicorn's defaults, stated: a request line or header block larger than this is refused at once.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
max_requests = 10000
max_requests_jitter = 1000
accesslog = None
errorlog = "-"
