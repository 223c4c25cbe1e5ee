-- Runs once, when the postgres container starts on an EMPTY data volume
-- (/docker-entrypoint-initdb.d, executed by psql as the superuser with ON_ERROR_STOP).
-- One database and one login role per component; passwords come from the container's
-- environment (set in .env, see docker-compose.yaml) through psql's \getenv (psql 15+).
-- Changing a password later: ALTER ROLE ... PASSWORD ...; (this file does not run again).

\getenv fraud_password FRAUD_DB_PASSWORD
\getenv airflow_password AIRFLOW_DB_PASSWORD
\getenv mlflow_password MLFLOW_DB_PASSWORD

-- fraudloop: predictions, labels, model_events (tables are created by fraud_lib.store.migrate)
CREATE ROLE fraud LOGIN PASSWORD :'fraud_password';
CREATE DATABASE fraud OWNER fraud;
REVOKE ALL ON DATABASE fraud FROM PUBLIC;

-- Airflow metadata database (airflow db migrate creates the schema)
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

-- MLflow tracking + model registry backend store (the server migrates it on start)
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
