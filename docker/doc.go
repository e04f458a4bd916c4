// Package docker holds no code: the directory has the container image,
// the compose file and the Prometheus and Grafana files of a three-region
// deployment (see README.md). Its tests check them where no Docker engine
// runs: the compose file's references and its secure defaults, the NATS
// server configs (generated from internal/natsauth, checked with
// nats-server's own parser), the alert rules (promtool), the metric names in
// the dashboard and the rules (against a running partition), and the
// container entrypoint's bootstrap (on SoftHSM2, outside a container).
package docker
