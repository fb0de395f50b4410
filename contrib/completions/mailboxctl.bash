# bash completion for mailboxctl. Install: copy to
# /usr/share/bash-completion/completions/mailboxctl (or source it).
_mailboxctl() {
    local cur prev i cmd=""
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    local commands="ping send publish join leave members drop info stats token watch"
    local options="-s --socket -t --timeout --event --except --url --from --count -h --help"
    case "$prev" in
        -s|--socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        -t|--timeout|--event|--except|--url|--from|--count) COMPREPLY=(); return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
        return
    fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -s|--socket|-t|--timeout|--event|--except|--url|--from|--count) ((i++)) ;;
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    else
        COMPREPLY=()
    fi
}
complete -F _mailboxctl mailboxctl
