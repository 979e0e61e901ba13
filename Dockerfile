# One image for the web server and both kinds of worker.
# Build for CPU hosts as is; for GPU workers pass --build-arg TORCH_INDEX_URL=<a CUDA wheel index>
# so that the same torch version comes as a CUDA build.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgl/glib for OpenCV's headless wheel; postgresql-client for pg_isready in the entrypoint.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 libgl1 postgresql-client \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.lock .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" -r requirements.lock; \
    else \
      pip install --no-cache-dir -r requirements.lock; \
    fi

COPY . .
RUN DJANGO_DEBUG=true python manage.py collectstatic --noinput \
 && useradd --create-home --uid 1000 thyrocine \
 && mkdir -p /app/var && chown -R thyrocine /app/var
USER thyrocine

EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "webapp.asgi:application"]
