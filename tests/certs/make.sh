#!/usr/bin/env bash
# Regenerates the test-only certificates in this directory (committed so that tests need no
# openssl binary; valid for 100 years). Never use these keys outside tests.
#   ca.pem           a private test CA (ECDSA P-256)
#   server.pem       leaf for localhost / 127.0.0.1, signed by the CA, followed by nothing else
#   server.key       its PKCS#8 private key
#   other-ca.pem     a second CA nobody trusts; other.pem / other.key is a localhost leaf from it
#   server.p12       for Windows: an RSA 2048 leaf for localhost / 127.0.0.1 signed by the CA and
#                    its key, in PKCS#12 (password "switchboard"), its certificate also in
#                    server-rsa.pem; other.p12 / other-rsa.pem likewise from other-ca.
#                    SChannel cannot take the PEM pair: native-tls imports a PKCS#8 key into an
#                    RSA-only CSP, and Wine's PFX import takes RSA keys only (.ci/wine/repro/).
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ext=$(mktemp)
trap 'rm -f "$ext" ./*.csr ./*.srl ./*-rsa.key' EXIT
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
for ca in ca other-ca; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=switchboard test $ca" -keyout "$ca.key" -out "$ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
done
make_leaf() { # name ca
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days "$days" \
    -extfile "$ext" -out "$1.pem"
}
make_leaf server ca
make_leaf other other-ca
# The Windows identities: RSA leaves from the same CAs, bundled with their keys.
for leaf in server:ca other:other-ca; do
  name=${leaf%%:*} ca=${leaf#*:}
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$name-rsa.key" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -days "$days" \
    -extfile "$ext" -out "$name-rsa.pem"
  openssl pkcs12 -export -in "$name-rsa.pem" -inkey "$name-rsa.key" -passout pass:switchboard \
    -out "$name.p12"
  rm -f "$name-rsa.key"
done
rm -f ca.key other-ca.key
