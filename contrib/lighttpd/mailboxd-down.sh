#!/bin/sh
# lighttpd's error handler for /comet/ (server.error-handler in the configs
# beside this file), run through mod_cgi; installed by the package as
# /usr/share/mailboxd/lighttpd/mailboxd-down.sh.
#
# While mailboxd is down (restarting, upgrading) lighttpd answers 503, and an
# EventSource that gets anything but 200 gives up for good. This turns the
# outage into an empty event stream with a retry hint, so the browser comes
# back; long-polls and raw streams keep the 503 (their clients retry).
# Errors mailboxd itself sent (403, 429, ...) never come here: lighttpd
# passes a backend's answer through as it is.
case "$REDIRECT_STATUS" in
502 | 503 | 504) ;;
*)
    printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n' "${REDIRECT_STATUS:-404}"
    exit 0
    ;;
esac
case "$REQUEST_URI" in
*[?\&]transport=poll* | *[?\&]transport=stream*)
    printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 2\r\n\r\nmailboxd is restarting; retry.\n'
    ;;
*)
    printf 'Status: 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\nretry: 2000\n\n'
    ;;
esac
