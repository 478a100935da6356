#!/bin/sh
# One-shot job of infra/compose.yaml (`minio-init`), run on every `up` and idempotent: the DVC and MLflow
# buckets, and the team's key with read-write access to those two buckets only (the root account stays
# for administration). Settings from the env file: MINIO_ROOT_*, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
# (the team key, S3_* in infra/.env), DVC_BUCKET, MLFLOW_BUCKET.
set -eu
mc alias set sg2 http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "sg2/$DVC_BUCKET" "sg2/$MLFLOW_BUCKET"
cat > /tmp/sg2-team.json <<JSON
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
  "Resource": ["arn:aws:s3:::$DVC_BUCKET", "arn:aws:s3:::$DVC_BUCKET/*",
               "arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$MLFLOW_BUCKET/*"]}]}
JSON
mc admin policy create sg2 sg2-team /tmp/sg2-team.json >/dev/null
mc admin user add sg2 "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
mc admin policy attach sg2 sg2-team --user "$AWS_ACCESS_KEY_ID" >/dev/null 2>&1 || true  # attached already
echo "minio-init: buckets $DVC_BUCKET, $MLFLOW_BUCKET; team key $AWS_ACCESS_KEY_ID"
