#!/usr/bin/env bash
# Regenerates the test-only certificates in this directory (committed so that tests need no
# openssl binary; valid for 100 years). Never use these keys outside tests.
#   ca.pem           a private test CA (ECDSA P-256)
#   server.pem       leaf for localhost / 127.0.0.1, signed by the CA, followed by nothing else
#   server.key       its PKCS#8 private key
#   other-ca.pem     a second CA nobody trusts; other.pem / other.key is a localhost leaf from it
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ext=$(mktemp)
trap 'rm -f "$ext" ./*.csr ./*.srl' EXIT
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
rm -f ca.key other-ca.key
