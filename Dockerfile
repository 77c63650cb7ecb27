# syntax=docker/dockerfile:1
# Two stages: the build stage needs pip's caches and build tools, the runtime image does not.
FROM python:3.11.13-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
COPY schemas ./schemas
RUN pip install .


FROM python:3.11.13-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHURN_WEB_HOST=0.0.0.0 \
    CHURN_WEB_PORT=6066

RUN groupadd --system --gid 10001 churn \
    && useradd --system --uid 10001 --gid churn --home-dir /app --shell /usr/sbin/nologin churn
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=churn:churn data ./data
COPY ops/healthcheck.py /usr/local/lib/churn/healthcheck.py
RUN chown churn:churn /app

USER churn
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "/usr/local/lib/churn/healthcheck.py"]

ENTRYPOINT ["stream-app"]
CMD ["worker"]
