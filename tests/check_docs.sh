#!/usr/bin/env bash
# tests/check_docs.sh: the repository explains itself. `make run-tests` runs this as one of its suites,
# from the repository root; it reads files only (no build, no network) and takes well under a second.
#
# (a) No file points outside the repository. Every text file of the repository is read (the files git
#     tracks; outside a git checkout, every file but those .gitignore names: build/, demo/, runs/,
#     .device/, ./msdiff, *.tmp). Binary files are skipped. A line fails when it holds
#       1. a path through the parent folder's `shared` folder (`..` followed by `/shared`), wherever
#          it appears: the notes kept there are not part of the repository;
#       2. a relative path with `..` segments that, resolved from the folder of the file that holds it,
#          climbs above the repository root (`#include "../ref/ref.h"` in tests/ stays inside: fine);
#       3. in a markdown file, a link `[text](target)` to a relative target that leaves the repository
#          or names nothing in it (resolved from the file's folder; web links and #anchors are skipped);
#       4. an absolute path into the development machine's /work folder (any file), or into its
#          /tmp folder (documentation: *.md files and docs/). Exempt from the /tmp part: docs/device/,
#          logs copied verbatim from GPU machines, which record the scratch folders that the
#          device scripts used there;
#       5. a design-note name (DESIGN, STYLE or PAPER followed by .md) that names no file of the
#          repository, read from the root or from the file's folder: `docs/DESIGN.md` is fine
#          anywhere, a bare name only inside docs/ where that file exists.
#     Each offence prints as "FILE:LINE: what: the text".
#
# (b) docs/WALKTHROUGH.md exists, and each of its stops names something real. A stop is a numbered
#     list item whose first thing is a backticked `path:name`, e.g.
#         1. `common/model/train.c:msd_train_step`: one training step, ...
#     (the path is everything before the first colon). It fails unless the path is a file of the
#     repository and `name` is defined in it, by this rule, according to the file's kind:
#       C, CUDA (.c .h .cu .cuh .cpp): a function definition (a line that starts in column 0 with a
#           return type and has `name(`, where a `{` comes before any `;`), a `#define name`, a
#           `struct|enum|union name {`, a typedef naming it, a file-scope variable (`name =`,
#           `name[] =` or `name;` in column 0, not extern), or a Check test `START_TEST(name)`;
#       shell (.sh): a function `name()`;   Python (.py): `def name` or `class name`;
#       Makefile: a target `name:` or a variable `name =`;
#       markdown (.md): a heading whose text is exactly `name`.
#     A numbered item that starts with a backticked text that is not `path:name` is a bad stop too, and
#     so is a walkthrough without a single stop. Each bad stop prints as "docs/WALKTHROUGH.md:LINE: ...".
#
# Exit status: 0 when everything holds, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1

fail=0
list=$(mktemp) || exit 1
trap 'rm -f "$list"' EXIT

# The repository's files, one per line, relative to the root.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files >"$list"
    texts() { git grep -I -l -e '' -- . ; }
else
    find . \( -path ./.git -o -path ./build -o -path ./demo -o -path ./runs -o -path ./.device \) -prune \
        -o -type f ! -path ./msdiff ! -name '*.tmp' -print | sed 's|^\./||' | sort >"$list"
    texts() { tr '\n' '\0' <"$list" | xargs -0 grep -I -l -e '' -- ; }
fi

# ---------------------------------------------------------------------------------------------------
# (a) references out of the repository

# shellcheck disable=SC2016 # the awk program is single-quoted on purpose
refs_awk='
# Split the path p (relative, "/"-separated) against the folder dir; the normalised path, or "^" when
# it climbs above the root.
function resolve(dir, p,    parts, n, i, out, depth, stack) {
    n = split((dir == "" ? "" : dir "/") p, parts, "/")
    depth = 0
    for (i = 1; i <= n; i++) {
        if (parts[i] == "" || parts[i] == ".") continue
        if (parts[i] == "..") { if (depth == 0) return "^"; depth--; continue }
        stack[++depth] = parts[i]
    }
    out = ""
    for (i = 1; i <= depth; i++) out = out (i > 1 ? "/" : "") stack[i]
    return out
}
function report(what, text) {
    printf "%s:%d: %s: %s\n", FILENAME, FNR, what, text
    bad = 1
}
FNR == NR { known[$0] = 1; n = split($0, d, "/"); p = ""
            for (i = 1; i < n; i++) { p = p (i > 1 ? "/" : "") d[i]; known[p] = 1 }
            next }
FNR == 1 { dir = FILENAME; if (!sub(/\/[^\/]*$/, "", dir)) dir = ""
           isdoc = FILENAME ~ /\.md$/ || FILENAME ~ /^docs\//
           ismd = FILENAME ~ /\.md$/
           records = FILENAME ~ /^docs\/device\// }
{
    line = $0
    # 1. the parent folder'"'"'s shared folder
    if (line ~ /\.\.\/shared([^A-Za-z0-9_]|$)/) report("refers to the notes outside the repository", line)
    # 2. relative paths that climb out
    s = index(line, "../") ? line : ""
    while (match(s, /[A-Za-z0-9_.~+\/-]+/)) {
        tok = substr(s, RSTART, RLENGTH); s = substr(s, RSTART + RLENGTH)
        if (tok ~ /^\// || tok !~ /(^|\/)\.\.\//) continue
        if (resolve(dir, tok) == "^") report("path leaves the repository", tok)
    }
    # 3. markdown links
    if (ismd) {
        s = line
        while (match(s, /\]\([^) \t]+\)/)) {
            tgt = substr(s, RSTART + 2, RLENGTH - 3); s = substr(s, RSTART + RLENGTH)
            sub(/#.*/, "", tgt)
            if (tgt == "" || tgt ~ /^[a-zA-Z][a-zA-Z0-9+.-]*:/ || tgt ~ /^\//) continue
            r = resolve(dir, tgt)
            if (r == "^") report("link leaves the repository", tgt)
            else if (!(r in known)) report("link to nothing in the repository", tgt)
        }
    }
    # 4. absolute paths of the development machine
    if (line ~ /(^|[^A-Za-z0-9_.~\/-])[\/]work\//) report("absolute path into the machine'"'"'s work folder", line)
    if (isdoc && !records && line ~ /(^|[^A-Za-z0-9_.~\/-])[\/]tmp\//)
        report("absolute path into the machine'"'"'s tmp folder in documentation", line)
    # 5. design-note names that name no file here
    s = line
    while (match(s, /[A-Za-z0-9_.\/-]*(DESIGN|STYLE|PAPER)\.md/)) {
        tok = substr(s, RSTART, RLENGTH); s = substr(s, RSTART + RLENGTH)
        if (tok !~ /(^|\/)(DESIGN|STYLE|PAPER)\.md$/) continue
        if (tok !~ /^\//) {
            if (tok !~ /^\.\.?\// && resolve("", tok) in known) continue
            if (resolve(dir, tok) in known) continue
        }
        report("names a design note that is not in the repository (docs/DESIGN.md, docs/METHOD.md)", tok)
    }
}
END { exit bad }
'
if ! texts | tr '\n' '\0' | xargs -0 awk "$refs_awk" "$list"; then
    fail=1
fi

# ---------------------------------------------------------------------------------------------------
# (b) the walkthrough's stops

walk=docs/WALKTHROUGH.md

# Whether `name` is defined in `file` (the rules at the top), by the file's kind.
# shellcheck disable=SC2016
defines_awk='
function isid(c) { return c ~ /[A-Za-z0-9_]/ }
# The position of name in s as a whole word followed by what the regex `after` matches, else 0.
function word(s, after,    off, p, rest) {
    off = 0
    while ((p = index(s, name)) > 0) {
        rest = substr(s, p + length(name))
        if ((p == 1 || !isid(substr(s, p - 1, 1))) && rest ~ ("^" after)) return off + p
        off += p; s = substr(s, p + 1)
    }
    return 0
}
{ sub(/\r$/, "") }
kind == "c" {
    if (pending) {                     # a function header that spans lines: { or ; decides
        if ($0 ~ /[{;]/) { if (index($0, "{") && (!index($0, ";") || index($0, "{") < index($0, ";"))) found = 1; pending = 0 }
        next
    }
    if ($0 ~ ("^#[ \t]*define[ \t]+" name "([ \t(]|$)")) found = 1
    if (index($0, "START_TEST(" name ")") == 1) found = 1
    if ($0 ~ /^(typedef[ \t]+)?(struct|enum|union)[ \t]/ && word($0, "[ \t]*[{]")) found = 1
    if ($0 ~ /^typedef[ \t]/ && word($0, "")) found = 1
    if ($0 ~ /^}/ && word($0, "[ \t]*;")) found = 1
    if ($0 ~ /^[A-Za-z_]/ && $0 !~ /^(extern|return|typedef)[ \t]/) {
        p = word($0, "[ \t]*[(]")
        if (p > 1 && substr($0, 1, p - 1) ~ /[A-Za-z0-9_*][ \t*]*$/) {
            rest = substr($0, p)
            if (rest ~ /[{;]/) { if (index(rest, "{") && (!index(rest, ";") || index(rest, "{") < index(rest, ";"))) found = 1 }
            else pending = 1
        }
        p = word($0, "(\\[[^]]*\\])?[ \t]*[=;]")
        if (p > 1 && index(substr($0, 1, p - 1), "(") == 0) found = 1
    }
}
kind == "sh" && $0 ~ ("^[ \t]*(function[ \t]+)?" name "[ \t]*[(][ \t]*[)]") { found = 1 }
kind == "py" && $0 ~ ("^[ \t]*(def|class)[ \t]+" name "([^A-Za-z0-9_]|$)") { found = 1 }
kind == "make" && (index($0, name) == 1 && substr($0, length(name) + 1) ~ /^[ \t]*(:|[:?+]?=)/) { found = 1 }
kind == "md" && $0 ~ /^#+[ \t]/ { h = $0; sub(/^#+[ \t]+/, "", h); sub(/[ \t#]*$/, "", h); if (h == name) found = 1 }
END { exit found ? 0 : 1 }
'

bad_stop() {
    echo "$walk:$1: stop \`$2\`: $3"
    fail=1
}

if [ ! -f "$walk" ]; then
    echo "$walk: missing (the walkthrough is a required document)"
    fail=1
else
    stops=0
    while IFS= read -r entry; do
        lineno=${entry%%:*}
        text=${entry#*:}
        # the backticked text at the start of the numbered item
        spec=$(printf '%s\n' "$text" | sed -n 's/^[[:space:]]*[0-9][0-9]*\.[[:space:]][[:space:]]*`\([^`]*\)`.*/\1/p')
        stops=$((stops + 1))
        case $spec in
        *:*) ;;
        *) bad_stop "$lineno" "$spec" "not of the form path:name"; continue ;;
        esac
        path=${spec%%:*}
        name=${spec#*:}
        if [ -z "$path" ] || [ -z "$name" ]; then
            bad_stop "$lineno" "$spec" "not of the form path:name"
            continue
        fi
        if ! grep -qxF -- "$path" "$list"; then
            bad_stop "$lineno" "$spec" "$path is not a file of the repository"
            continue
        fi
        case $path in
        *.c | *.h | *.cu | *.cuh | *.cpp) kind=c ;;
        *.sh) kind=sh ;;
        *.py) kind=py ;;
        Makefile | */Makefile | *.mk) kind=make ;;
        *.md) kind=md ;;
        *) bad_stop "$lineno" "$spec" "no rule for names in this kind of file"; continue ;;
        esac
        if ! awk -v kind="$kind" -v name="$name" "$defines_awk" "$path"; then
            bad_stop "$lineno" "$spec" "$name is not defined in $path"
        fi
    done < <(grep -n -E '^[[:space:]]*[0-9]+\.[[:space:]]+`' "$walk")
    if [ "$stops" -eq 0 ]; then
        echo "$walk: no stops (numbered items that start with \`path:name\`)"
        fail=1
    fi
fi

if [ "$fail" -ne 0 ]; then
    echo "check_docs: FAILED"
    exit 1
fi
echo "check_docs: every reference stays in the repository; every walkthrough stop names a definition"
