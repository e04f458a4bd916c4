#!/bin/sh
# Entrypoint of the mrkrepl image.
#
#   mrkrepl-entrypoint bootstrap        bootstrap the region (below), then exit
#   mrkrepl-entrypoint worker [flags]   wait for the trust bundle, then run the worker
#   mrkrepl-entrypoint proxy [flags]    wait for the trust bundle, then run the proxy
#   mrkrepl-entrypoint ARGS...          run "mrkrepl ARGS..."
#
# The bootstrap is the only step that writes the bundle volume: compose runs
# it in a one-shot container per region (bootstrap-<region>) and mounts the
# bundle read-only into the workers and proxies, which only wait for it.
#
# Region bootstrap, idempotent (every "compose up" runs it again):
#   1. at first start, initialise the region's SoftHSM2 token in the tokens
#      volume with random PINs (the user PIN stays in the volume, mode 0600:
#      the worker reads it from there, hsm.pin_file);
#   2. create the region's RSK inside the token ("mrkrepl hsm init");
#   3. write the region's bundle fragment to the shared bundle volume (again
#      if the token's RSK changed);
#   4. wait for the fragments of every region in BOOTSTRAP_REGIONS and merge
#      them into bundle.json (every region's bootstrap computes the same bundle);
#   5. sign it with the partition's root key into bundle.cose, what the
#      workers and proxies read (serial = the previous one's + 1; nothing is
#      written if bundle.cose already holds this bundle). The root key lives
#      in its own volume (bundle-root), mounted by the bootstraps only; the
#      first bootstrap to get there makes it, and every one writes its public
#      key to root.pub beside the bundle. (In production the root key is
#      offline: docs/OPERATIONS.md, "Trust bundle".)
#
# Variables: MRKREPL_REGION, MRKREPL_HSM (the token's pkcs11: URI) — also
# read by the worker itself — and BOOTSTRAP_PARTITION, BOOTSTRAP_REGIONS
# (space-separated), BOOTSTRAP_TIMEOUT (seconds, default 300); the
# directories can be moved with BOOTSTRAP_BUNDLE_DIR, BOOTSTRAP_ROOT_DIR and
# BOOTSTRAP_TOKENS (tests run this script outside a container).
set -eu

bundle_dir=${BOOTSTRAP_BUNDLE_DIR:-/var/lib/mrkrepl/bundle}
tokens=${BOOTSTRAP_TOKENS:-/var/lib/mrkrepl/tokens}
root_dir=${BOOTSTRAP_ROOT_DIR:-/var/lib/mrkrepl/root}
pin_file=$tokens/user.pin
timeout=${BOOTSTRAP_TIMEOUT:-300}

log() { printf '%s mrkrepl-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "$*"; exit 1; }
random_pin() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

# wait_for FILE WORD...: wait until FILE exists and mentions every WORD.
wait_for() {
	file=$1
	shift
	waited=0
	while :; do
		missing=
		if [ -s "$file" ]; then
			for w in "$@"; do grep -q "\"$w\"" "$file" || missing="$missing $w"; done
		else
			missing=" (no file yet)"
		fi
		[ -z "$missing" ] && return 0
		[ "$waited" -ge "$timeout" ] && die "gave up after ${timeout}s waiting for $file:$missing"
		[ $((waited % 15)) -eq 0 ] && log "waiting for $file:$missing"
		sleep 1
		waited=$((waited + 1))
	done
}

bootstrap_worker() {
	: "${MRKREPL_REGION:?set MRKREPL_REGION}" "${MRKREPL_HSM:?set MRKREPL_HSM}"
	: "${BOOTSTRAP_PARTITION:?set BOOTSTRAP_PARTITION}" "${BOOTSTRAP_REGIONS:?set BOOTSTRAP_REGIONS}"
	label=mrkrepl-$MRKREPL_REGION
	if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label: *$label *\$"; then
		log "initialising SoftHSM2 token $label (first start)"
		umask 077
		random_pin >"$pin_file"
		# softhsm2-util takes PINs only as arguments: they are visible to
		# this container's processes for the duration of this one command.
		softhsm2-util --init-token --free --label "$label" \
			--so-pin "$(random_pin)" --pin "$(cat "$pin_file")" >/dev/null
		umask 022
	fi
	kid=$(mrkrepl hsm init --hsm "$MRKREPL_HSM" --pin-file "$pin_file" | awk '{print $2}')
	[ -n "$kid" ] || die "no RSK in token $label"
	log "region $MRKREPL_REGION signs with RSK $kid"

	mkdir -p "$bundle_dir/fragments"
	fragment=$bundle_dir/fragments/$MRKREPL_REGION.json
	if ! grep -q "\"kid\": \"$kid\"" "$fragment" 2>/dev/null; then
		mrkrepl rsk --hsm "$MRKREPL_HSM" --pin-file "$pin_file" \
			--region "$MRKREPL_REGION" --partition "$BOOTSTRAP_PARTITION" >"$fragment.tmp"
		mv -f "$fragment.tmp" "$fragment"
		log "wrote $fragment"
	fi
	fragments=
	for r in $BOOTSTRAP_REGIONS; do
		wait_for "$bundle_dir/fragments/$r.json" "$r"
		fragments="$fragments $bundle_dir/fragments/$r.json"
	done
	# shellcheck disable=SC2086 # one path per region
	mrkrepl bundle $fragments >"$bundle_dir/bundle.json.$MRKREPL_REGION.tmp"
	mv -f "$bundle_dir/bundle.json.$MRKREPL_REGION.tmp" "$bundle_dir/bundle.json"
	log "trust bundle of partition $BOOTSTRAP_PARTITION: $BOOTSTRAP_REGIONS"

	# The root key: made once (create never overwrites; a bootstrap that
	# loses the race uses the winner's).
	root_key=$root_dir/root.key
	if [ ! -s "$root_key" ]; then
		mrkrepl bundle root-key create --out "$root_key" --pub "$root_key.pub.$MRKREPL_REGION" \
			--partition "$BOOTSTRAP_PARTITION" >/dev/null 2>&1 && log "made the partition's root key" || true
		rm -f "$root_key.pub.$MRKREPL_REGION"
	fi
	[ -s "$root_key" ] || die "no root key in $root_dir"
	mrkrepl bundle root-key public --partition "$BOOTSTRAP_PARTITION" "$root_key" >"$bundle_dir/root.pub.$MRKREPL_REGION.tmp"
	mv -f "$bundle_dir/root.pub.$MRKREPL_REGION.tmp" "$bundle_dir/root.pub"
	mrkrepl bundle sign --root-key "$root_key" --out "$bundle_dir/bundle.cose" "$bundle_dir/bundle.json" >&2
}

# wait_bundle: wait for the signed bundle naming every region of
# BOOTSTRAP_REGIONS (grep reads the JSON inside it) and the root's public key.
wait_bundle() {
	: "${BOOTSTRAP_REGIONS:?set BOOTSTRAP_REGIONS}"
	# shellcheck disable=SC2086 # one word per region
	wait_for "$bundle_dir/bundle.cose" $BOOTSTRAP_REGIONS
	wait_for "$bundle_dir/root.pub"
}

case "${1:-}" in
bootstrap)
	bootstrap_worker
	;;
worker | proxy)
	cmd=$1
	shift
	wait_bundle
	exec mrkrepl "$cmd" "$@"
	;;
*)
	exec mrkrepl "$@"
	;;
esac
