#!/bin/sh
# Makes the NATS passwords of docker/compose.yaml: one random password per
# user of docker/nats/*.conf (the same in every region), written as the
# environment file compose reads, docker/.env (mode 0600, ignored by git).
#
#   sh docker/passwords.sh [FILE]     # default: docker/.env
#
# It never overwrites a file: delete it to change the passwords (then
# restart everything: the servers read them when they start).
# go test ./docker/ checks it names every user of the configs.
set -eu

out=${1:-$(dirname "$0")/.env}
[ -e "$out" ] && { echo "passwords.sh: $out exists; delete it to make new passwords" >&2; exit 1; }

# A letter first: nats-server parses a variable's value as a config
# value, and a password of digits only would be a number.
password() { printf 'p%s' "$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')"; }

umask 077
{
	echo "# NATS passwords of docker/compose.yaml, made by docker/passwords.sh."
	for v in \
		MRKREPL_NATS_WORKER_PASSWORD \
		MRKREPL_NATS_PROXY_PASSWORD \
		MRKREPL_NATS_ADMIN_PASSWORD \
		MRKREPL_NATS_APP_DEMO_APP_PASSWORD; do
		echo "$v=$(password)"
	done
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "passwords.sh: wrote $out" >&2
