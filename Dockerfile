# syntax=docker/dockerfile:1
# One image for the scoring service, the Airflow components, the MLflow server and the `fraud` CLI.
#   docker build -t fraudloop:latest .
#   docker run --rm fraudloop:latest fraud --help            # CLI
# The default CMD is the scoring service; in a container it needs FRAUD_DATABASE_URL and
# MLFLOW_TRACKING_URI (the image has no embedded Postgres): see docker-compose.yaml.
# Every wheel in requirements.txt is pure Python or manylinux (x86_64); the project's own
# extensions (serving/*.pyx, fraud_lib/features/_kernels.pyx) are compiled at install, with a
# compiler removed after.
FROM python:3.11-slim

# OMP_NUM_THREADS=1: two gunicorn workers each running an OpenMP pool fell to ~16 requests/s
# on 2 cores; with the limit they did ~270. Training tasks get the same limit.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1

RUN groupadd --system --gid 10001 fraud \
 && useradd --system --uid 10001 --gid fraud --create-home --home-dir /home/fraud \
        --shell /usr/sbin/nologin fraud

WORKDIR /app

# Dependencies first (exact, tested-together pins), so code changes reuse this layer.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The project itself, without touching the pinned dependencies.
COPY pyproject.toml README.md ./
COPY fraud_lib/ ./fraud_lib/
COPY serving/ ./serving/
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install --no-deps . && rm -rf build ./*.egg-info \
 && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/*

COPY dags/ ./dags/

# Writable directories, owned by the runtime user. Named volumes mounted on these paths start
# as a copy of them, so they inherit this ownership.
RUN mkdir -p /var/lib/fraudloop /var/spool/fraudloop /data/drift_reports \
        /opt/airflow/logs /opt/airflow/auth /mlartifacts \
 && chown -R fraud:fraud /var/lib/fraudloop /var/spool/fraudloop /data /opt/airflow /mlartifacts

ENV FRAUD_STATE_DIR=/var/lib/fraudloop \
    FRAUD_SPOOL_DIR=/var/spool/fraudloop \
    FRAUD_REPORTS_DIR=/data/drift_reports \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/app/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

USER fraud
EXPOSE 8000

# Scoring service: settings in serving/gunicorn_conf.py (FRAUD_WORKERS, FRAUD_WORKER_CLASS, ...).
CMD ["gunicorn", "-c", "python:serving.gunicorn_conf", "--bind", "0.0.0.0:8000", "serving.wsgi:app"]
