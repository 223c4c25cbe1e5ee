"""The fraudloop scoring service: Flask app factory, blueprints, model holder, prediction log.

Deliberately empty of imports: ``serving.gunicorn_conf`` is imported by the gunicorn master,
which must set ``PROMETHEUS_MULTIPROC_DIR`` and the thread limits before prometheus_client,
numpy or scikit-learn are imported anywhere.
"""
