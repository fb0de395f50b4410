# bash completion for mailboxd. Install: copy to
# /usr/share/bash-completion/completions/mailboxd (or source it).
_mailboxd() {
    local cur prev
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    local options="--http --fastcgi --scgi --control --control-mode --control-allow --socket-mode
        --gateway-allow --reuse-port --config --retain --retain-bytes --mailbox-ttl
        --max-subscribers --max-mailboxes --max-groups --max-message --max-memory --heartbeat
        --poll-timeout --max-output --max-connections --request-timeout --retry-ms
        --dead-peer-timeout --state-dir --fsync --compact-after --metrics --metrics-allow
        --store --secret-file --pid-file -h --help -V --version"
    case "$prev" in
        --config|--secret-file|--control|--pid-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --state-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --fsync) COMPREPLY=($(compgen -W "always everysec never" -- "$cur")); return ;;
        --store) COMPREPLY=($(compgen -W "memory redis:// unix:" -- "$cur")); return ;;
        --reuse-port|-h|--help|-V|--version) ;;
        --*) COMPREPLY=(); return ;;
    esac
    COMPREPLY=($(compgen -W "$options" -- "$cur"))
}
complete -F _mailboxd mailboxd
