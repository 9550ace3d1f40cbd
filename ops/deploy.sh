#!/usr/bin/env bash
# Deploy main on this machine: pull, install, write secrets from SSM, migrate, restart, and
# wait for /v1/healthz. If anything after the pull fails, go back to the commit that was
# running, restart it, and exit non-zero.
#
#   ops/deploy.sh            run by .github/workflows/deploy.yml over SSH, or by hand
#   DEPLOY_REF=<sha> ops/deploy.sh   also check that this commit is what gets deployed
#
# Migrations are forward-only and additive, so a rollback restarts the old code against the
# migrated schema; it never reverses a migration. Settings below can be overridden by
# environment variables of the same name (the tests use that to run it in a sandbox).
set -euo pipefail

APP_DIR="${OMNITUTOR_APP_DIR:-/home/ubuntu/omnitutor-app}"
SERVICE="${OMNITUTOR_SERVICE:-omnitutor}"
ENV_FILE="${OMNITUTOR_ENV_FILE:-/etc/omnitutor/env}"
OWNER_ENV_FILE="${OMNITUTOR_OWNER_ENV_FILE:-/etc/omnitutor/owner.env}"
SSM_PATH="${OMNITUTOR_SSM_PATH:-/omnitutor/prod/}"
SSM_OWNER_PATH="${OMNITUTOR_SSM_OWNER_PATH:-/omnitutor/prod-owner/}"
AWS_REGION="${AWS_REGION:-us-east-1}"
UNIT_DIR="${OMNITUTOR_UNIT_DIR:-/etc/systemd/system}"
HEALTH_URL="${OMNITUTOR_HEALTH_URL:-http://127.0.0.1:8790/v1/healthz}"
HEALTH_TIMEOUT_S="${OMNITUTOR_HEALTH_TIMEOUT_S:-60}"
LOCK_FILE="${OMNITUTOR_DEPLOY_LOCK:-/tmp/omnitutor-deploy.lock}"
# Root is needed for /etc/omnitutor and systemctl; empty when already root.
SUDO="${SUDO-sudo}"
BIN="$APP_DIR/.venv/bin"

say() { printf 'deploy: %s\n' "$*" >&2; }

healthy() {
  # Green means HTTP 200 with "ok":true; anything else, keep waiting until the deadline.
  local deadline=$((SECONDS + HEALTH_TIMEOUT_S)) body green='"ok"[[:space:]]*:[[:space:]]*true'
  while ((SECONDS < deadline)); do
    if body="$(curl --silent --fail --max-time 2 "$HEALTH_URL")" && [[ "$body" =~ $green ]]; then
      return 0
    fi
    sleep 1
  done
  return 1
}

install_code() {
  make -C "$APP_DIR" venv
}

write_secrets() {
  # The API's secrets, and the schema owner's URL for migrations, kept out of the API's env.
  $SUDO "$BIN/omnitutor" ops secrets-env --path "$SSM_PATH" --output "$ENV_FILE" \
    --region "$AWS_REGION"
  $SUDO "$BIN/omnitutor" ops secrets-env --path "$SSM_OWNER_PATH" \
    --output "$OWNER_ENV_FILE" --region "$AWS_REGION"
}

migrate() {
  # shellcheck disable=SC2016  # $1 and $2 expand in the inner shell, on purpose
  $SUDO sh -c 'set -a; . "$1"; set +a; exec "$2" db migrate' sh "$OWNER_ENV_FILE" \
    "$BIN/omnitutor"
}

install_units() {
  local unit changed=0
  for unit in "$APP_DIR"/ops/systemd/*.service "$APP_DIR"/ops/systemd/*.timer; do
    if ! cmp -s "$unit" "$UNIT_DIR/$(basename "$unit")"; then
      $SUDO install -m 0644 "$unit" "$UNIT_DIR/"
      changed=1
    fi
  done
  if ((changed)); then
    $SUDO systemctl daemon-reload
  fi
}

restart() {
  # 9>&-: whatever the restart leaves running must not hold the deploy lock.
  $SUDO systemctl restart "$SERVICE" 9>&-
}

release() {
  install_code || return 1
  write_secrets || return 1
  migrate || return 1
  install_units || return 1
  restart || return 1
  healthy || { say "$HEALTH_URL not green within ${HEALTH_TIMEOUT_S}s"; return 1; }
}

rollback() {
  local to="$1"
  say "rolling back to $to"
  git -C "$APP_DIR" reset --hard --quiet "$to"
  install_code && install_units && restart && healthy
}

main() {
  exec 9>"$LOCK_FILE"
  flock --nonblock 9 || { say "another deploy is running"; exit 1; }

  local previous current
  previous="$(git -C "$APP_DIR" rev-parse HEAD)"
  git -C "$APP_DIR" pull --ff-only --quiet
  current="$(git -C "$APP_DIR" rev-parse HEAD)"
  if [[ -n "${DEPLOY_REF:-}" ]] && ! git -C "$APP_DIR" merge-base --is-ancestor "$DEPLOY_REF" HEAD; then
    say "$DEPLOY_REF is not in what was pulled ($current); not deploying"
    git -C "$APP_DIR" reset --hard --quiet "$previous"
    exit 1
  fi
  say "deploying $current (was $previous)"

  local started=$SECONDS
  if release; then
    say "$current is live and healthy in $((SECONDS - started))s"
    return 0
  fi
  if rollback "$previous"; then
    say "deploy of $current failed; $previous is back and healthy"
    exit 1
  fi
  say "deploy of $current failed and $previous is not healthy either: look at journalctl -u $SERVICE"
  exit 2
}

# Everything is in functions, read whole before anything runs: the pull may rewrite this file.
main "$@"
