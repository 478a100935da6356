# MLflow tracking server for the team stack (infra/compose.yaml): PostgreSQL backend store, served
# artifacts (a volume, or an S3-compatible bucket through boto3). Same MLflow version range as the project.
FROM python:3.11-slim-bookworm
ARG MLFLOW_VERSION=3.17.2
ENV PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9" "boto3>=1.34" \
 && useradd --uid 1000 --create-home mlflow && mkdir -p /mlartifacts && chown mlflow /mlartifacts
COPY --chmod=0755 infra/docker/db_preflight.py /usr/local/bin/db_preflight.py
USER mlflow
EXPOSE 5000
# The backend store URI and artifacts destination come from the environment (MLFLOW_BACKEND_STORE_URI,
# MLFLOW_ARTIFACTS_DESTINATION): no credentials on the command line.
CMD ["sh", "-c", "db_preflight.py MLFLOW_BACKEND_STORE_URI MLFLOW_DB_PASSWORD && exec mlflow server --host 0.0.0.0 --port 5000 --workers ${MLFLOW_WORKERS:-2}"]
