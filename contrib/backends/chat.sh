#!/bin/sh
# A chat room from the shell with mailboxctl: each user has a mailbox, the
# room is a group, and a message goes to everyone but its sender.
#
#   chat.sh join ROOM USER        # USER's browser listens on /comet/USER
#   chat.sh say ROOM USER TEXT    # everyone in ROOM but USER gets TEXT
#   chat.sh leave ROOM USER
#
# MAILBOXD_SOCKET selects the control socket (default: mailboxd's, as mailboxctl finds it);
# MAILBOXCTL the binary (default: mailboxctl on the PATH).
set -eu
ctl=${MAILBOXCTL:-mailboxctl}
case "${1:-}" in
join)  "$ctl" join "$2" "$3" ;;
leave) "$ctl" leave "$2" "$3" ;;
say)   printf '%s: %s\n' "$3" "$4" | "$ctl" publish "$2" - --event chat --except "$3" ;;
*)     echo "usage: $0 join|say|leave ROOM USER [TEXT]" >&2; exit 2 ;;
esac
