#!/usr/bin/env bash
# Records tests/data/demo.pcap: real TLS, SSH and DNS-like UDP sessions between local tools,
# captured with tcpdump on the loopback interface. The project makes this capture itself, so
# the tests have traffic whose origin and licence are known.
#
# What it runs (ports are fixed so the README's flow list stays true):
#   TLS  openssl s_server -WWW on 127.0.0.1:48443 and [::1]:48444, fetched by s_client with
#        TLS 1.2 and 1.3 and several file sizes; one resumed TLS 1.3 session.
#   TLS  openssl s_server -rev (echo, reversed) on 127.0.0.1:48445: the client sends data.
#   SSH  a private sshd on 127.0.0.1:48022 and [::1]:48022 with its own host key and config,
#        key login with a throwaway key: a few commands, then an scp upload and download.
#   UDP  a DNS-like query/answer exchange on 127.0.0.1:48053 and [::1]:48053 (python3).
#
# Everything runs inside a private network namespace when the kernel allows it, so the
# capture holds only our traffic and loopback can use a 1500-byte MTU without offloads,
# which gives packet sizes like a real link. Without one it falls back to the host's
# loopback and leaves its settings alone.
#
# Needs root (tcpdump, unshare, sshd). Installs tcpdump, openssh, openssl and ethtool from
# Debian if missing. Idempotent: every run starts from a fresh temp dir and replaces the
# capture atomically; nothing outside the temp dir and tests/data/demo.pcap is written,
# except /run/sshd, the privilege-separation directory sshd insists on.
#
# Usage: scripts/make-demo-capture.sh [output.pcap]   (default tests/data/demo.pcap)
#   COMBO_DEMO_KEEP=1   keep the temp dir (keys, configs, server logs) for debugging
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
output="${1:-$repo/tests/data/demo.pcap}"

# Fixed ports, high enough to stay clear of anything a developer runs.
readonly tls_v4_port=48443
readonly tls_v6_port=48444
readonly tls_echo_port=48445
readonly ssh_port=48022
readonly udp_port=48053
readonly server_name="combo-demo.local"
readonly client_timeout=30 # seconds; a stuck client fails the run instead of hanging it

log() { printf '[demo-capture] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (tcpdump, network namespaces and sshd need it)"

# Step 1, outside the namespace because apt needs the network: install missing tools.
if [ "${COMBO_DEMO_STAGE:-}" != "inside" ]; then
    missing=()
    for pkg in tcpdump openssh-server openssh-client openssl ethtool iproute2; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi

    # Step 2: re-run this script inside a fresh network namespace when possible.
    if unshare --net true 2>/dev/null; then
        log "recording inside a private network namespace"
        exec unshare --net env COMBO_DEMO_STAGE=inside COMBO_DEMO_NETNS=1 \
            bash "${BASH_SOURCE[0]}" "$output"
    fi
    log "no network namespace available; recording on the host loopback"
fi

work="$(mktemp -d /tmp/combo-demo-capture.XXXXXX)"
background_pids=()

# Stops only the processes this script started, then removes the temp dir.
cleanup() {
    local pid
    for pid in "${background_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${background_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${COMBO_DEMO_KEEP:-}" = 1 ]; then
        log "kept $work for inspection"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# Waits until something listens on a TCP port (ss -t) or has bound a UDP one (ss -u).
wait_for_port() {
    local proto="$1" port="$2"
    for _ in $(seq 1 100); do
        if ss -Hn"$proto"l "sport = :$port" | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing listening on $proto port $port after 10 s (see $work/*.log)"
}

# Refuses to start if a fixed port is taken, instead of capturing someone else's traffic.
for port in "$tls_v4_port" "$tls_v6_port" "$tls_echo_port" "$ssh_port"; do
    if ss -Hntl "sport = :$port" | grep -q .; then
        die "TCP port $port is already in use"
    fi
done

# Step 3: loopback settings, only inside our own namespace. A 1500-byte MTU and no
# segmentation offloads make tcpdump see wire-sized packets instead of 64 KiB ones.
if [ "${COMBO_DEMO_NETNS:-}" = 1 ]; then
    ip link set lo up
    ip link set lo mtu 1500
    ethtool -K lo tso off gso off gro off 2>/dev/null || log "could not turn offloads off"
fi

# Step 4: content to serve. Pseudo-random but fixed (AES-CTR over zeros with a fixed key),
# so every run transfers the same bytes and the packet counts barely change.
fixed_bytes() {
    head -c "$1" /dev/zero |
        openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv 0 2>/dev/null
}
mkdir -p "$work/www"
{
    printf '<!doctype html><title>Combo Packet demo</title><pre>\n'
    fixed_bytes 768 | base64
    printf '</pre>\n'
} >"$work/www/index.html"
fixed_bytes 4096 >"$work/www/blob-4k.bin"
fixed_bytes 16384 >"$work/www/blob-16k.bin"
fixed_bytes 65536 >"$work/www/blob-64k.bin"
fixed_bytes 163840 >"$work/www/blob-160k.bin"
fixed_bytes 98304 >"$work/upload-96k.bin"

# Step 5: a throwaway self-signed certificate (ECDSA P-256) valid for one day.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=$server_name" -addext "subjectAltName=DNS:$server_name" \
    -keyout "$work/tls-key.pem" -out "$work/tls-cert.pem" 2>/dev/null

# Step 6: a private sshd with its own host key, config and authorized key.
ssh-keygen -q -t ed25519 -N '' -C combo-demo-host -f "$work/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -C combo-demo-client -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
host_key_pub="$(cut -d' ' -f1-2 "$work/ssh_host_ed25519_key.pub")"
printf '[127.0.0.1]:%s %s\n[::1]:%s %s\n' \
    "$ssh_port" "$host_key_pub" "$ssh_port" "$host_key_pub" >"$work/known_hosts"
cat >"$work/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
ListenAddress ::1
HostKey $work/ssh_host_ed25519_key
PidFile $work/sshd.pid
AuthorizedKeysFile $work/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
EOF
mkdir -p /run/sshd # sshd refuses to start without its privilege-separation directory
/usr/sbin/sshd -t -f "$work/sshd_config"

# Step 7: start the capture first so every session is recorded from its first packet.
capture_filter="port $tls_v4_port or port $tls_v6_port or port $tls_echo_port"
capture_filter+=" or port $ssh_port or port $udp_port"
tcpdump -i lo -s 0 -U -Z root -w "$work/demo.pcap" "$capture_filter" \
    >"$work/tcpdump.log" 2>&1 &
tcpdump_pid=$!
background_pids+=("$tcpdump_pid")
for _ in $(seq 1 100); do
    grep -q "listening on" "$work/tcpdump.log" && break
    sleep 0.1
done
grep -q "listening on" "$work/tcpdump.log" ||
    die "tcpdump did not start: $(cat "$work/tcpdump.log")"

# Step 8: the servers. s_server loops over connections until killed.
(
    cd "$work/www"
    exec openssl s_server -quiet -WWW -accept "127.0.0.1:$tls_v4_port" \
        -cert "$work/tls-cert.pem" -key "$work/tls-key.pem" </dev/null >"$work/tls-v4.log" 2>&1
) &
background_pids+=("$!")
(
    cd "$work/www"
    exec openssl s_server -quiet -WWW -6 -accept "[::1]:$tls_v6_port" \
        -cert "$work/tls-cert.pem" -key "$work/tls-key.pem" </dev/null >"$work/tls-v6.log" 2>&1
) &
background_pids+=("$!")
openssl s_server -quiet -rev -accept "127.0.0.1:$tls_echo_port" \
    -cert "$work/tls-cert.pem" -key "$work/tls-key.pem" </dev/null >"$work/tls-echo.log" 2>&1 &
background_pids+=("$!")
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
background_pids+=("$!")
wait_for_port t "$tls_v4_port"
wait_for_port t "$tls_v6_port"
wait_for_port t "$tls_echo_port"
wait_for_port t "$ssh_port"

# Step 9: TLS sessions. Each fetch is one TCP connection; the server closes after the file.
# tls_fetch HOST PORT PATH OPENSSL-OPTIONS...
tls_fetch() {
    local host="$1" port="$2" path="$3" address
    shift 3
    address="$host:$port"
    [[ "$host" != *:* ]] || address="[$host]:$port" # IPv6 literals need brackets
    printf 'GET /%s HTTP/1.0\r\n\r\n' "$path" |
        timeout "$client_timeout" openssl s_client -quiet -connect "$address" \
            -servername "$server_name" \
            -CAfile "$work/tls-cert.pem" -verify_return_error "$@" \
            >"$work/fetched" 2>>"$work/s_client.log" ||
        die "TLS fetch of /$path from $host:$port failed (see $work/s_client.log)"
    # Served files start after the HTTP header; a body shorter than the file means a cut.
    [ "$(wc -c <"$work/fetched")" -ge "$(wc -c <"$work/www/$path")" ] ||
        die "TLS fetch of /$path from $host:$port came back short"
}
log "TLS sessions"
tls_fetch 127.0.0.1 "$tls_v4_port" index.html -tls1_3
tls_fetch 127.0.0.1 "$tls_v4_port" blob-64k.bin -tls1_3 -sess_out "$work/tls13.session"
tls_fetch 127.0.0.1 "$tls_v4_port" blob-4k.bin -tls1_3 -sess_in "$work/tls13.session"
tls_fetch 127.0.0.1 "$tls_v4_port" blob-16k.bin -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256
tls_fetch ::1 "$tls_v6_port" index.html -tls1_2 -cipher ECDHE-ECDSA-CHACHA20-POLY1305
tls_fetch ::1 "$tls_v6_port" blob-160k.bin -tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384
tls_fetch ::1 "$tls_v6_port" blob-16k.bin -tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256

# The echo server answers each line reversed; the pause lets the answers arrive before
# the client closes on end of input (-no_ign_eof undoes the -ign_eof that -quiet implies).
{
    for line in $(seq 1 40); do
        printf 'client line %02d: %s\n' "$line" "$(fixed_bytes 48 | base64 -w0)"
    done
    sleep 1
} | timeout "$client_timeout" openssl s_client -quiet -no_ign_eof \
    -connect "127.0.0.1:$tls_echo_port" -servername "$server_name" \
    -CAfile "$work/tls-cert.pem" -verify_return_error -tls1_3 \
    >"$work/echoed" 2>>"$work/s_client.log" || die "TLS echo session failed"
[ -s "$work/echoed" ] || die "TLS echo server sent nothing back"

# Step 10: SSH sessions with the throwaway key, against our sshd only.
ssh_options=(-F /dev/null -i "$work/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
    -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=yes
    -o LogLevel=ERROR)
user="$(id -un)"
ssh_run() { timeout "$client_timeout" ssh "${ssh_options[@]}" -p "$ssh_port" "$@" >/dev/null; }
scp_copy() { timeout "$client_timeout" scp -q "${ssh_options[@]}" -P "$ssh_port" "$@"; }
log "SSH sessions"
ssh_run "$user@127.0.0.1" 'uname -sr; id -un'
ssh_run "$user@127.0.0.1" 'ls -l /etc | head -n 40'
ssh_run "$user@::1" 'echo combo packet over ipv6'
scp_copy "$work/upload-96k.bin" "$user@[127.0.0.1]:$work/uploaded.bin"
cmp -s "$work/upload-96k.bin" "$work/uploaded.bin" || die "scp upload arrived different"
scp_copy "$user@[::1]:$work/www/blob-16k.bin" "$work/downloaded.bin"
cmp -s "$work/www/blob-16k.bin" "$work/downloaded.bin" || die "scp download arrived different"

# Step 11: DNS-like UDP, one process playing both sides on IPv4 and IPv6. Each query goes
# from a fresh client socket, so each is its own flow. Optional: skipped without python3.
if command -v python3 >/dev/null 2>&1; then
    log "UDP exchanges"
    python3 - "$udp_port" <<'PYTHON'
import socket
import struct
import sys

port = int(sys.argv[1])

def query(txid, name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    header = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0)  # RD, one question
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)  # type A, class IN

def answer(request, last_octet):
    # Copy the question, set QR/RA, add one A record that points back at the name.
    txid = request[:2]
    header = txid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + bytes([192, 0, 2, last_octet])
    return header + request[12:] + record

for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.socket(family, socket.SOCK_DGRAM) as server:
        server.bind((host, port))
        for index, name in enumerate(("example.com", "combo-packet.test", "tls.demo")):
            with socket.socket(family, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(query(0x1000 + index, name), (host, port))
                request, peer = server.recvfrom(512)
                server.sendto(answer(request, 10 + index), peer)
                client.recvfrom(512)
PYTHON
else
    log "python3 not found: skipping the UDP exchanges"
fi

# Step 12: stop tcpdump with SIGINT so it flushes, then publish the capture atomically.
sleep 0.5 # lets the last FIN/ACKs through
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" || true
grep -E "packets (captured|dropped by kernel)" "$work/tcpdump.log" >&2 || true
packets="$(tcpdump -r "$work/demo.pcap" 2>/dev/null | wc -l)"
[ "$packets" -gt 0 ] || die "the capture is empty"
mkdir -p "$(dirname "$output")"
cp "$work/demo.pcap" "$output.tmp"
mv -f "$output.tmp" "$output"
log "wrote $output: $packets packets, $(wc -c <"$output") bytes"
