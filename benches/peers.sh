#!/usr/bin/env bash
# benches/peers.sh: RabbitMQ beside `puente bench`, in one sitting, in one table.
#
# Installs Debian's rabbitmq-server if it is missing, starts a throwaway node of it on 127.0.0.1
# only (AMQPS with mutual TLS, EXTERNAL authentication by the client certificate's CN, no plain
# AMQP listener, no management plugin, its own epmd, node name, data and log directories in a
# temporary directory), checks that a client without a certificate is refused, declares a
# durable quorum queue and drives it with amqp-peer (benches/peers/, lapin over rustls) with
# publisher confirms and 1 KiB persistent messages: 1 publisher, 32 publishers, 32 publishers
# + 1 consumer acknowledging every message, and 32 publishers + 32 consumers on the same queue
# (as many connections as Puente's 32 readers; each message still goes to one consumer, as each
# goes to one Puente reader). It then stops the broker (so that an idle Erlang VM does not share
# the 2 cores with Puente's runs), runs `puente bench --readers 0`, `puente bench --senders 1
# --readers 0 --messages 3000 --proofs 0` and `puente bench` (32 senders / 32 readers), and
# prints one table. Everything it started is stopped by its PID (trap on EXIT) and the
# temporary directory removed.
#
#   bash benches/peers.sh            # the full run (about 10 minutes with the builds done)
#   bash benches/peers.sh --quick    # smaller counts: a smoke run
#
# Environment: PEERS_AMQPS_PORT (default 5671), PEERS_EPMD_PORT (default 4370; our own epmd,
# never the system's 4369), PEERS_STEP_TIMEOUT (seconds per measured step, default 600),
# PEERS_SETTLE (seconds of `sync` and rest before each measured step, default 5). The JSON
# reports are kept if PEERS_KEEP is set to a directory.
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "peers.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
AMQPS_PORT=${PEERS_AMQPS_PORT:-5671}
EPMD_PORT=${PEERS_EPMD_PORT:-4370}
DIST_PORT=$((AMQPS_PORT + 20000))
STEP_TIMEOUT=${PEERS_STEP_TIMEOUT:-600}
SETTLE=${PEERS_SETTLE:-5}
RABBIT_BIN=/usr/lib/rabbitmq/bin

if [ "$QUICK" = 1 ]; then
    MESSAGES=2000; SINGLE=300; PROOFS=(--proofs 0); COUNTS=(--messages 2000)
else
    MESSAGES=20000; SINGLE=3000; PROOFS=(); COUNTS=()
fi

say() { printf 'peers: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# === RabbitMQ from Debian ===
if [ ! -x "$RABBIT_BIN/rabbitmq-server" ]; then
    [ "$(id -u)" = 0 ] || die "rabbitmq-server is not installed and this is not root: apt-get install -y rabbitmq-server"
    say "installing rabbitmq-server (apt)"
    timeout 900 apt-get update -q >&2
    # Debian's postinst may start the packaged service (on a systemd machine); this script
    # neither uses nor stops it.
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q rabbitmq-server >&2
fi
command -v openssl >/dev/null || die "openssl is needed for the throwaway certificates"
EPMD=$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | head -n1)
[ -x "$EPMD" ] || die "epmd (Erlang) not found"

for port in "$AMQPS_PORT" "$EPMD_PORT" "$DIST_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is already in use (set PEERS_AMQPS_PORT / PEERS_EPMD_PORT)"
    fi
done

# === Builds (release) ===
say "building amqp-peer and puente (release)"
(cd "$REPO/benches/peers" && timeout 1800 cargo build --release --quiet) >&2
(cd "$REPO" && timeout 1800 cargo build --release --quiet --bin puente) >&2
PEER="$REPO/benches/peers/target/release/amqp-peer"
PUENTE="$REPO/target/release/puente"

# === The throwaway node, and what stops it ===
TMP=$(mktemp -d /tmp/puente-peers.XXXXXX)
chmod 700 "$TMP"
NODE="puente-peers-$$@localhost"
EPMD_PID=""
WRAPPER_PID=""
BEAM_PID=""

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Runs a rabbitmq CLI tool against our node (its cookie is in $TMP, its epmd on EPMD_PORT),
# for at most SECONDS: ctl SECONDS TOOL ARGS...
ctl() {
    local seconds=$1 tool=$2; shift 2
    timeout --kill-after=5 "$seconds" env HOME="$TMP" ERL_EPMD_PORT="$EPMD_PORT" RABBITMQ_CONF_ENV_FILE="$TMP/rabbitmq-env.conf" \
        RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        "$RABBIT_BIN/$tool" -n "$NODE" "$@"
}

wait_gone() { # PID SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do alive "$1" || return 0; sleep 0.1; done
    return 1
}

stop_broker() {
    if alive "$BEAM_PID" || alive "$WRAPPER_PID"; then
        say "stopping RabbitMQ (node $NODE, pids $WRAPPER_PID $BEAM_PID)"
        ctl 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
        wait_gone "$BEAM_PID" 30 || true
        if alive "$WRAPPER_PID"; then kill -TERM "$WRAPPER_PID" 2>/dev/null || true; wait_gone "$WRAPPER_PID" 30 || true; fi
        for pid in $BEAM_PID $WRAPPER_PID; do
            if alive "$pid"; then say "killing $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
        done
    fi
    if alive "$EPMD_PID"; then
        kill -TERM "$EPMD_PID" 2>/dev/null || true
        wait_gone "$EPMD_PID" 10 || kill -KILL "$EPMD_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    BEAM_PID=""; WRAPPER_PID=""; EPMD_PID=""
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_broker
    if [ -n "${PEERS_KEEP:-}" ] && [ -d "$TMP/reports" ]; then
        mkdir -p "$PEERS_KEEP" && cp "$TMP"/reports/* "$PEERS_KEEP"/ 2>/dev/null || true
    fi
    if [ "$status" != 0 ] && [ -d "$TMP/log" ]; then
        say "failed ($status); the broker's last log lines:"
        tail -n 20 "$TMP"/log/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$TMP/certs" "$TMP/mnesia" "$TMP/log" "$TMP/reports"

# === Throwaway PKI: a CA, the broker's certificate (localhost, 127.0.0.1), a client's (CN amqp-peer) ===
say "making a throwaway CA and certificates in $TMP/certs"
(
    cd "$TMP/certs"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=puente peers.sh test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    issue() { # NAME CN EXTENSIONS
        openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" "$3" > "$1.ext"
        openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    }
    issue server localhost "$(printf 'extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1')"
    issue client amqp-peer "extendedKeyUsage=clientAuth"
    openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
)

# === The node's configuration ===
: > "$TMP/rabbitmq-env.conf" # not /etc/rabbitmq/rabbitmq-env.conf
echo '[rabbitmq_auth_mechanism_ssl].' > "$TMP/enabled_plugins"
cat > "$TMP/rabbitmq.conf" <<EOF
# Throwaway node of benches/peers.sh: AMQPS on loopback only, mutual TLS, no plain AMQP.
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TMP/certs/ca.pem
ssl_options.certfile = $TMP/certs/server.pem
ssl_options.keyfile = $TMP/certs/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
# The client is who its certificate says (CN), as in Puente; no passwords on the wire.
auth_mechanisms.1 = EXTERNAL
ssl_cert_login_from = common_name
default_vhost = /
default_user = amqp-peer
default_pass = $(openssl rand -hex 16)
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
log.console = false
log.file = rabbit.log
log.file.level = warning
EOF

# Our own epmd, on loopback and on a port of its own: the node registers there, and we stop it.
"$EPMD" -port "$EPMD_PORT" -address 127.0.0.1 >"$TMP/log/epmd.out" 2>&1 &
EPMD_PID=$!

say "starting RabbitMQ node $NODE on 127.0.0.1:$AMQPS_PORT (AMQPS only)"
env HOME="$TMP" \
    ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_CONF_ENV_FILE="$TMP/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$NODE" \
    RABBITMQ_CONFIG_FILE="$TMP/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$TMP/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$TMP/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$TMP/mnesia" \
    RABBITMQ_LOG_BASE="$TMP/log" \
    RABBITMQ_PID_FILE="$TMP/rabbitmq.pid" \
    RABBITMQ_DIST_PORT="$DIST_PORT" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$RABBIT_BIN/rabbitmq-server" >"$TMP/log/startup.out" 2>&1 &
WRAPPER_PID=$!

# The VM: the wrapper script's child whose command line names our temporary directory (while
# the script sets up, its other children come and go).
find_beam() {
    local pid
    for pid in $(pgrep -P "$WRAPPER_PID" || true); do
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$TMP"; then echo "$pid"; return; fi
    done
}

# Ready when `await_startup` answers.
ready=0
for ((i = 0; i < 120; i++)); do
    alive "$WRAPPER_PID" || { cat "$TMP/log/startup.out" >&2; die "rabbitmq-server exited during startup"; }
    [ -n "$BEAM_PID" ] || BEAM_PID=$(find_beam)
    if ctl 30 rabbitmqctl -q await_startup --timeout 20 >/dev/null 2>&1; then ready=1; break; fi
    sleep 1
done
[ -n "$BEAM_PID" ] || BEAM_PID=$(find_beam)
[ "$ready" = 1 ] || die "RabbitMQ did not start within the time allowed"
[ -n "$BEAM_PID" ] || die "cannot find our node's Erlang VM among the children of $WRAPPER_PID"
RABBIT_VERSION=$(ctl 30 rabbitmqctl -q eval 'rabbit_misc:version().' 2>/dev/null | tr -d '"' || echo '?')
ERLANG_VERSION=$(ctl 30 rabbitmqctl -q eval 'rabbit_misc:otp_release().' 2>/dev/null | tr -d '"' || echo '?')
say "RabbitMQ $RABBIT_VERSION (Erlang/OTP $ERLANG_VERSION) ready: wrapper $WRAPPER_PID, VM $BEAM_PID, epmd $EPMD_PID"
if command -v ss >/dev/null; then
    ss -ltnpH 2>/dev/null | grep -E "pid=($BEAM_PID|$EPMD_PID)," | awk '{print "peers: listening " $4}' >&2 || true
fi

# Mutual TLS for real: a client without a certificate must be turned away in the handshake.
refusal=$( (printf 'AMQP\0\0\011\001'; sleep 2) | timeout 10 openssl s_client -quiet -connect "127.0.0.1:$AMQPS_PORT" \
    -CAfile "$TMP/certs/ca.pem" 2>&1 || true)
if grep -q "certificate required" <<<"$refusal"; then
    say "a client without a certificate is refused (TLS alert: certificate required)"
else
    die "the node did not refuse a client without a certificate: $refusal"
fi

settle() { sync; sleep "$SETTLE"; }

# Runs one measured step, bounded; its JSON report goes to reports/NAME.json. The 1-minute
# load average as each step starts is kept for the table's footer (other work on the machine).
LOADS=()
step() {
    local name=$1; shift
    settle
    LOADS+=("$name $(cut -d' ' -f1 /proc/loadavg)")
    say "$name: $*"
    if ! timeout --kill-after=10 "$STEP_TIMEOUT" "$@" > "$TMP/reports/$name.json" 2> "$TMP/reports/$name.err"; then
        tail -n 20 "$TMP/reports/$name.err" >&2
        die "$name failed or took longer than ${STEP_TIMEOUT}s"
    fi
}

URI="amqps://127.0.0.1:$AMQPS_PORT/%2f?auth_mechanism=external"
peer=("$PEER" run --uri "$URI" --ca "$TMP/certs/ca.pem" --cert "$TMP/certs/client.pem"
      --key "$TMP/certs/client.key" --queue puente-peers --size 1024
      --timeout "$((STEP_TIMEOUT - 30))" --json)
step rabbit-1 "${peer[@]}" --publishers 1 --messages "$SINGLE"
step rabbit-32 "${peer[@]}" --publishers 32 --messages "$MESSAGES"
step rabbit-32c "${peer[@]}" --publishers 32 --consumers 1 --messages "$MESSAGES"
step rabbit-32c32 "${peer[@]}" --publishers 32 --consumers 32 --messages "$MESSAGES"

stop_broker

step puente-32 "$PUENTE" bench --readers 0 "${COUNTS[@]}" "${PROOFS[@]}" --json
step puente-1 "$PUENTE" bench --senders 1 --readers 0 --messages "$SINGLE" --proofs 0 --json
step puente-3232 "$PUENTE" bench "${COUNTS[@]}" "${PROOFS[@]}" --json

echo
echo "benches/peers.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)$([ "$QUICK" = 1 ] && echo ', --quick')"
echo "RabbitMQ $RABBIT_VERSION (Erlang/OTP $ERLANG_VERSION), quorum queue, mutual TLS, publisher confirms, ${MESSAGES} x 1 KiB persistent (1 publisher: $SINGLE); Puente $("$PUENTE" --version 2>/dev/null | awk '{print $2}') ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
R1="RabbitMQ quorum, 1 publisher"
R32="RabbitMQ quorum, 32 publishers"
R32C="RabbitMQ quorum, 32 publishers + 1 consumer"
R32C32="RabbitMQ quorum, 32 publishers + 32 consumers"
P1="Puente, 1 sender"
P32="Puente, 32 senders"
P3232="Puente, 32 senders / 32 readers"
"$PEER" table --reference "$R32" --pair "$P1=$R1" --pair "$P32=$R32" --pair "$P3232=$R32C32" \
    "$R1=$TMP/reports/rabbit-1.json" \
    "$R32=$TMP/reports/rabbit-32.json" \
    "$R32C=$TMP/reports/rabbit-32c.json" \
    "$R32C32=$TMP/reports/rabbit-32c32.json" \
    "$P1=$TMP/reports/puente-1.json" \
    "$P32=$TMP/reports/puente-32.json" \
    "$P3232=$TMP/reports/puente-3232.json"
echo "load average (1 min) as each step started: $(IFS=,; echo "${LOADS[*]}" | sed 's/,/, /g')"
