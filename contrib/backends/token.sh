#!/bin/sh
# Mints a mailboxd access token from a shell (openssl only), for mailboxd
# started with --secret-file FILE. See docs/security.md for the format.
#
#   contrib/backends/token.sh /etc/mailboxd/secret alice 300
#   -> v1.1795892468.<signature>; open /comet/alice?token=<that>
#
# NOW=<unix seconds> fixes the clock (for the test vector).
set -eu
[ $# -eq 3 ] || { echo "usage: $0 SECRET_FILE MAILBOX TTL_SECONDS" >&2; exit 2; }
file=$1 mailbox=$2 ttl=$3
# The key is the file without trailing spaces, tabs, CR and LF; passed to
# openssl as hex so that any byte survives.
key=$(od -An -v -tx1 "$file" | tr -d ' \n')
while :; do
    case $key in
        *20 | *09 | *0d | *0a) key=${key%??} ;;
        *) break ;;
    esac
done
expiry=$(( ${NOW:-$(date +%s)} + ttl ))
tag=$(printf 'mailboxd-token-v1\n%s\n%s' "$mailbox" "$expiry" \
    | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary \
    | openssl base64 -A | tr '+/' '-_' | tr -d '=')
printf 'v1.%s.%s\n' "$expiry" "$tag"
