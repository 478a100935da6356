#!/bin/sh
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d): one role and one
# database each for MLflow and Prefect, passwords from the env file. Changing a password in infra/.env
# later does NOT change it in the database: `ALTER ROLE ... PASSWORD` by hand, or a fresh volume.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v mlflow_user="$MLFLOW_DB_USER" -v mlflow_pw="$MLFLOW_DB_PASSWORD" \
     -v prefect_user="$PREFECT_DB_USER" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER :"mlflow_user";
CREATE ROLE :"prefect_user" LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE prefect OWNER :"prefect_user";
SQL
