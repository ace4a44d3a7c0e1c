"""The man page imgstor(8) and the bash completion script, made from the CLI's command table.

``man_page(table)`` and ``completion(table)`` return the text of ``docs/imgstor.8`` and
``contrib/imgstor.bash-completion``; ``imgstor help --man`` and ``imgstor help --completion``
print them (an installed one-file build carries its own), and ``scripts/gen-docs`` writes
the files in the tree (and the README's exit-code table).  tests/unit/test_docs.py checks
that the files are what the table makes, that the man page renders (groff) and that bash
loads the completion.
"""
from __future__ import annotations

from collections.abc import Sequence

from imgstor import clihelp
from imgstor.exitcodes import EXIT_CODES

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["man_page", "completion", "FILES", "ENVIRONMENT", "MAN_PATH", "COMPLETION_PATH"]

MAN_PATH = "docs/imgstor.8"
COMPLETION_PATH = "contrib/imgstor.bash-completion"
FILES = [
    ("/etc/imgstor/imgstor.toml", "the config: hosts, SSH, state path, [log], defaults "
                                  "(--config or IMGSTOR_CONFIG point elsewhere)"),
    ("/var/lib/imgstor/state.json", "the state ([state] path): VMs, volumes, jobs, "
                                    "attributes set by command; 0600, locked, replaced "
                                    "atomically.  Lost: imgstor rebuild"),
    ("STATE.lock, STATE.lock.holder", "the state's lock and who holds it"),
    ("STATE.hosts.json", "refresh's last answer of each host (up, since, boot id); its age "
                         "is the last refresh's"),
    ("STATE.refresh.lock", "one refresh at a time"),
    ("STATEDIR/jobs/ID.log, ID.progress", "a job's monitor log and progress; refresh "
                                          "removes them after [log] job_log_days"),
    ("STATEDIR/chap/NAS/VOL.json", "a volume's CHAP credentials (0600)"),
    ("[state] metrics_path", "the node_exporter textfile refresh writes (*.prom)"),
    ("/etc/cron.d/imgstor, imgstor-refresh.timer", "what runs imgstor refresh every minute "
                                                   "(contrib/)"),
    ("/dev/log", "the audit trail's syslog socket ([log] syslog)"),
    ("/run/imgstor/ (on nodes)", "imgstor's node app, locks, copy jobs, overlays: root's, "
                                 "0700"),
    ("/var/lib/imgstor/sync-gate.py (on nodes)", "the forced command of sync mode's "
                                                 "NAS<->node keys"),
]
ENVIRONMENT = [
    ("IMGSTOR_CONFIG", "the config file when --config is not given"),
    ("SUDO_USER", "recorded as sudo_user in the audit trail"),
    ("XDG_CACHE_HOME", "where the parsed config is cached (default ~/.cache/imgstor)"),
    ("SHIV_ROOT", "where the one-file build unpacks itself (default ~/.shiv)"),
]


# ------------------------------------------------------------------ man page
def _roff(text: str) -> str:
    """Text for a roff line: backslashes escaped, hyphens of options kept as minus
    signs, a leading dot or quote made literal."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\\&" + text if text[:1] in (".", "'") else text


def _bold(text: str) -> str:
    return f"\\fB{_roff(text)}\\fR"


def _command(cmd: Any) -> list[str]:
    args = " ".join(clihelp.metavar(a) for a in cmd.args)
    lines = [".TP", f"{_bold(cmd.name)} {_roff(args)}".rstrip(),
             _roff(cmd.help[:1].upper() + cmd.help[1:] + "."), ]
    if cmd.details:
        lines.append(_roff(cmd.details))
    items = [(clihelp.metavar(a), clihelp.arg_help(cmd, a)) for a in cmd.args]
    items += [(f"{k}=VALUE", clihelp.key_help(cmd, k)) for k in cmd.keys]
    items += [(f, clihelp.flag_help(cmd, f)) for f in cmd.flags]
    items += [(f"{o} {o.lstrip('-').upper()}", clihelp.flag_help(cmd, o))
              for o, _ in cmd.options]
    if items or cmd.examples:
        lines.append(".RS")
        for name, text in items:
            lines += [".TP", _bold(name), _roff(text)]
        if cmd.examples:
            lines += [".PP", "Example:", ".nf"]
            lines += [".RS", *(_roff(f"imgstor {e}") for e in cmd.examples), ".RE", ".fi"]
        lines.append(".RE")
    return lines


def man_page(table: Sequence[Any]) -> str:
    """imgstor(8) in man(7) macros."""
    from imgstor import __version__
    cmds = clihelp.visible(table)
    out = [
        '.\\" imgstor(8): made by imgstor/docgen.py from imgstor/cli.py\'s command table;',
        '.\\" do not edit: run scripts/gen-docs.',
        f'.TH IMGSTOR 8 "" "imgstor {__version__}" "System Administration"',
        ".nh", ".ad l",
        ".SH NAME",
        "imgstor \\- VM disks on ZFS NAS servers, mapped to compute nodes over iSCSI",
        ".SH SYNOPSIS",
        ".B imgstor",
        "[\\fIglobal flags\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR] [\\fIkey\\fR=\\fIvalue\\fR...]",
        ".br",
        ".B imgstor",
        "\\fICOMMAND\\fR \\fBhelp\\fR | \\fICOMMAND\\fR \\fB\\-h\\fR | \\fB\\-\\-help\\fR | "
        "\\fB\\-\\-version\\fR",
        ".br",
        ".B rocks",
        "\\fIverb\\fR \\fBhost\\fR \\fInoun\\fR ...",
        ".SH DESCRIPTION",
        _roff("imgstor keeps a cluster's VM disks on ZFS storage servers (NAS) and puts "
              "them where the VMs need them: a volume <vm>-vol on a NAS zpool, exported "
              "over iSCSI to the one compute node that runs the VM (direct mode), or "
              "copied to the node while the VM runs on an overlay (sync mode).  It runs "
              "idempotent steps on the hosts over SSH and keeps its state in one locked "
              "JSON file on the frontend; a command killed at any point is finished by "
              "running it again."),
        ".PP",
        _roff("The commands are those of the Rocks img-storage roll (rocks add host "
              "storagemap ...); rocks, a link to the same program, takes them with the "
              "rocks prefix.  Key=value arguments may come anywhere after the command "
              "words; a bare number as a size means GiB."),
        ".SH COMMANDS",
    ]
    for g in clihelp.groups(table):
        out += [f".SS {_roff(g)}"]
        for c in cmds:
            if c.group == g:
                out += _command(c)
    out += [".SH OPTIONS", _roff("Global flags go before or after the command.")]
    for name, text in clihelp.GLOBAL_FLAGS:
        out += [".TP", _bold(name), _roff(text)]
    out += [".SH FILES"]
    for name, text in FILES:
        out += [".TP", f"\\fI{_roff(name)}\\fR", _roff(text)]
    out += [".PP", _roff("STATE is the state file, STATEDIR its directory.")]
    out += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        out += [".TP", _bold(name), _roff(text)]
    out += [".SH EXIT STATUS"]
    for code, text in EXIT_CODES:
        out += [".TP", _bold(str(code)), _roff(text)]
    out += [".SH SEE ALSO",
            _roff("imgstorageadmin (imgstorageadmin --help), zfs(8), iscsiadm(8), "
                  "tgtadm(8), targetcli(8), syslog(3); docs/DESIGN.md and README.md of "
                  "the source.")]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ bash completion
_SCRIPT = r'''# bash completion for imgstor and rocks: made by imgstor/docgen.py from
# imgstor/cli.py's command table; do not edit: run scripts/gen-docs.
# Install: cp contrib/imgstor.bash-completion /usr/share/bash-completion/completions/imgstor
# (or source it).  Hosts come from the config, VMs and volumes from the state
# (`imgstor _complete KIND`, which answers nothing when it cannot read them).

# one entry per command: "WORDS|ARG KINDS (* repeats the last)|KEYS|FLAGS"
_imgstor_table=(
@TABLE@
)
_imgstor_globals="--json --dry-run -n --debug -v --config --help --version"

_imgstor_ask() {  # KIND [WORDS]: words from the config or the state
    local cfg=()
    [[ -n $_imgstor_cfg ]] && cfg=(--config "$_imgstor_cfg")
    "$_imgstor_prog" "${cfg[@]}" _complete "$@" 2>/dev/null
}

_imgstor() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local -a typed=()
    local i w skip=0
    _imgstor_prog=${COMP_WORDS[0]} _imgstor_cfg=""
    [[ $_imgstor_prog == rocks || $_imgstor_prog == */rocks ]] && _imgstor_prog=imgstor
    if [[ $prev == --config ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if ((skip)); then skip=0; _imgstor_cfg=$w; continue; fi
        case $w in
            --config) skip=1 ;;
            --config=*) _imgstor_cfg=${w#--config=} ;;
            -*|*=*) ;;
            *) typed+=("$w") ;;
        esac
    done
    local entry best="" bestn=0 next=()
    local n=${#typed[@]} words
    for entry in "${_imgstor_table[@]}"; do
        words=${entry%%|*}
        local -a cw=($words)
        local m=${#cw[@]} ok=1
        if ((m <= n)); then
            for ((i = 0; i < m; i++)); do [[ ${cw[i]} == "${typed[i]}" ]] || ok=0; done
            if ((ok && m > bestn)); then best=$entry; bestn=$m; fi
        else
            for ((i = 0; i < n; i++)); do [[ ${cw[i]} == "${typed[i]}" ]] || ok=0; done
            ((ok)) && next+=("${cw[n]}")
        fi
    done
    local cand="${next[*]}"
    if [[ -z $best ]]; then
        [[ $cur == -* ]] && cand+=" $_imgstor_globals"
        COMPREPLY=($(compgen -W "$cand" -- "$cur"))
        return
    fi
    local rest=${best#*|} kinds keys flags
    kinds=${rest%%|*}; rest=${rest#*|}
    keys=${rest%%|*}; flags=${rest#*|}
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$flags $_imgstor_globals" -- "$cur"))
        return
    fi
    local -a ks=($kinds)
    local pos=$((n - bestn)) kind=""
    if ((pos < ${#ks[@]})); then
        kind=${ks[pos]}
    elif ((${#ks[@]})) && [[ ${ks[-1]} == *'*' ]]; then
        kind=${ks[-1]}
    fi
    kind=${kind%'*'}
    local -a args=("${typed[@]:bestn}")
    case $kind in
        file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        nas|compute|host|vm|job|attr|syncattr) cand+=" $(_imgstor_ask "$kind")" ;;
        volume) cand+=" $(_imgstor_ask volume "${args[0]}")" ;;
        zpool) cand+=" $(_imgstor_ask zpool "${args[0]}")" ;;
        host-attr) cand+=" $(_imgstor_ask host) $(_imgstor_ask attr)" ;;
        nas-attr) ((pos == 0)) && cand+=" $(_imgstor_ask nas)" || cand+=" $(_imgstor_ask syncattr)" ;;
        nas-vol-attr)
            case $pos in
                0) cand+=" $(_imgstor_ask nas)" ;;
                1) cand+=" $(_imgstor_ask volume "${args[0]}")" ;;
                *) cand+=" $(_imgstor_ask syncattr)" ;;
            esac ;;
    esac
    COMPREPLY=($(compgen -W "$cand $keys" -- "$cur"))
    [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace 2>/dev/null
}
complete -F _imgstor imgstor rocks
'''


def completion(table: Sequence[Any]) -> str:
    """The bash completion script: the table's words, argument kinds, keys and flags."""
    entries = []
    for c in clihelp.visible(table):
        kinds = []
        for a in c.args:
            k = clihelp.arg_kind(a) or "-"
            kinds.append(k + ("*" if a.nargs in ("*", "+") else ""))
        keys = " ".join(f"{k}=" for k in c.keys)
        flags = " ".join([*c.flags, *(o for o, _ in c.options), "--help"])
        for words in (c.words, *c.aliases):
            entries.append(f'    "{" ".join(words)}|{" ".join(kinds)}|{keys}|{flags}"')
    return _SCRIPT.replace("@TABLE@", "\n".join(entries))
