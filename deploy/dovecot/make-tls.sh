#!/bin/sh
# Writes a development CA (ca.crt) and a certificate for the host "dovecot" (tls.crt, tls.key)
# into DIR, once: erpmail refuses plaintext IMAP and unverified certificates, so the mailbox of
# the compose profile "mail" needs a CA the workers trust (the IMAP connection's "ca_file").
set -eu
dir=${1:?usage: make-tls.sh DIR}
if [ -s "$dir/ca.crt" ] && [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ]; then
    echo "mail TLS: certificates already in $dir"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=erpmail development CA" -addext "keyUsage = critical, keyCertSign, cRLSign" \
    -keyout "$work/ca.key" -out "$work/ca.crt"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=dovecot" -keyout "$work/tls.key" -out "$work/tls.csr"
cat >"$work/server.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:dovecot, DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
openssl x509 -req -sha256 -days 825 -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -extfile "$work/server.ext" -out "$work/tls.crt"
mkdir -p "$dir"
cp "$work/tls.key" "$dir/tls.key"
chmod 0400 "$dir/tls.key"
# Dovecot's image runs as vmail (uid 1000); the CA key is not kept, so nothing else can be signed.
if [ "$(id -u)" = 0 ]; then chown 1000 "$dir/tls.key"; fi
cp "$work/tls.crt" "$dir/tls.crt"
cp "$work/ca.crt" "$dir/ca.crt"
chmod 0644 "$dir/tls.crt" "$dir/ca.crt"
echo "mail TLS: wrote ca.crt, tls.crt and tls.key to $dir"
