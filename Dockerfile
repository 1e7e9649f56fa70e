# Klarna Order Management for Saleor: one image for web (gunicorn) and worker processes.
#   docker build -t klarna-om .
#   docker run -e DATABASE_URL=postgresql://… -e KLARNA_APP_SECRET_KEYS=… -e KLARNA_APP_PUBLIC_URL=https://… \
#              -e KLARNA_APP_ALLOWED_SALEOR_URLS=https://shop.example.com/graphql/ klarna-om          # web
#   docker run … klarna-om klarna-om worker                                                        # worker
#   docker run … klarna-om klarna-om db upgrade                                                    # migrate (once per release)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 KLARNA_APP_ENV=production KLARNA_APP_BIND=0.0.0.0:8000 \
    KLARNA_APP_INSTANCE_PATH=/var/lib/klarna-om PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
WORKDIR /app
COPY pyproject.toml README.md manifest.json gunicorn.conf.py ./
COPY plugin ./plugin
COPY webhooks ./webhooks
COPY dashboard_ext ./dashboard_ext
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/klarna-om klarna \
    && mkdir -p /var/lib/klarna-om /tmp/prometheus && chown klarna /var/lib/klarna-om /tmp/prometheus
USER klarna
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"
# SIGTERM: gunicorn finishes in-flight requests (graceful_timeout); `klarna-om worker` finishes or
# releases its current jobs before exiting.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
