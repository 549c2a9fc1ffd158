"""The shipped deployment artifacts, checked by real tools and against the running service.

There is no Docker engine here, so each artifact is checked the strongest way
available offline: hadolint for the Dockerfile, the Compose Specification's
JSON schema for docker-compose.yml, promtool for the Prometheus config and
rules, kubernetes-validate's bundled schemas for deploy/k8s/, and real
processes: the service started with exactly the Dockerfile's command and
environment (then its HEALTHCHECK), and `make stack`'s real Prometheus, which
must find every metric that the dashboard and the alert rules query.
"""
