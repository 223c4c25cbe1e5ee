"""Config files the stack writes for nginx, Prometheus and Alertmanager, each in its
service's ``conf/`` directory. They follow the compose deployment's files in deploy/ (same
rules file, same scrape job and Alertmanager route), with 127.0.0.1 ports for host names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from fraud_lib.stack.plan import SCORING_REPLICAS, StackPlan

# Where Alertmanager posts when FRAUD_ALERT_WEBHOOK_URL is unset (nothing listens there).
NO_WEBHOOK = "http://127.0.0.1:9/no-webhook-configured"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

NGINX_CONF = """\
# Written by `fraud stack up`: the compose deployment's deploy/nginx.conf with the replicas'
# 127.0.0.1 ports instead of the `scoring` service name.
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {home}/access.log;
    client_body_temp_path {home}/tmp/body;
    proxy_temp_path {home}/tmp/proxy;
    fastcgi_temp_path {home}/tmp/fastcgi;
    uwsgi_temp_path {home}/tmp/uwsgi;
    scgi_temp_path {home}/tmp/scgi;

    upstream scoring {{
        zone scoring 64k;
{servers}
        keepalive 16;
    }}

    client_max_body_size 33m;

    server {{
        listen 127.0.0.1:{port};

        location = /lb-healthz {{
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }}

        location / {{
            proxy_pass http://scoring;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 5s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def _private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def nginx(plan: StackPlan) -> Path:
    """nginx.conf balancing over the scoring replicas."""
    home = plan.home("nginx")
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (home / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"        server 127.0.0.1:{plan.ports[r]};" for r in SCORING_REPLICAS)
    path = home / "conf" / "nginx.conf"
    path.write_text(NGINX_CONF.format(home=home, servers=servers, port=plan.ports["nginx"]))
    return path


def prometheus(plan: StackPlan) -> Path:
    """prometheus.yml: compose's config, scraping each replica and alerting Alertmanager."""
    conf = plan.home("prometheus") / "conf"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    local = {
        "scoring": [f"127.0.0.1:{plan.ports[r]}" for r in SCORING_REPLICAS],
        "prometheus": [f"127.0.0.1:{plan.ports['prometheus']}"],
        "alertmanager": [f"127.0.0.1:{plan.ports['alertmanager']}"],
    }
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": local[job["job_name"]]}]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": local["alertmanager"]}]}]
    for rule_file in config.get("rule_files", []):
        shutil.copy(DEPLOY / "prometheus" / rule_file, conf / rule_file)
    path = conf / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def alertmanager(plan: StackPlan) -> Path:
    """alertmanager.yml: compose's route and receiver; the webhook URL in a 0600 file."""
    conf = plan.home("alertmanager") / "conf"
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    url_file = conf / "webhook_url"
    _private(url_file, plan.webhook_url or NO_WEBHOOK)
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            slack["api_url_file"] = str(url_file)
    path = conf / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_all(plan: StackPlan) -> None:
    """Every generated config of the stack."""
    for name in ("nginx", "prometheus", "alertmanager"):
        (plan.home(name) / "conf").mkdir(parents=True, exist_ok=True)
    nginx(plan)
    prometheus(plan)
    alertmanager(plan)
