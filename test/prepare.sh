# test/prepare.sh: shared set-up for test/run, demo/run and bench/run.
#
# Source it from bash, then call:
#   wo_install_packages [extra packages...]   install what is missing (apt)
#   wo_build_and_install                      make (warnings are errors) + make install
#   wo_as_unprivileged CMD [ARGS...]          run CMD as a user PostgreSQL accepts,
#                                             in WO_WORKDIR (see wo_workdir)
#   wo_remove_workdir                         remove that directory if it is a copy
#   wo_count_tap LOG STATUS                   set TAP_PASSED, TAP_FAILED from prove's
#                                             output in LOG and its exit STATUS
#
# Sets PG_MAJOR (set it beforehand to choose a version), PG_BINDIR and
# PG_CONFIG (exported), and WO_ROOT (the repository).  A step that fails
# exits the calling script with a message.  Works on a fresh Debian 12
# machine, as root (CI) or as an ordinary user with sudo.

WO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unset WO_WORKDIR                # each script that sources this gets its own
WO_USER=webhook_runner
WO_PG_MAJOR_DEFAULT=15          # what Debian 12 ships
WO_CFLAGS='-Wall -Wextra -Werror -Wno-unused-parameter'  # PG headers have unused parameters

# Print a message on stderr and fail.
wo_die() {
    echo "$0: $*" >&2
    exit 1
}

# Run a command as root: directly, or through sudo.
wo_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        wo_die "need root for \"$*\": run as root or install sudo"
    fi
}

# Set PG_MAJOR, PG_BINDIR and PG_CONFIG: the newest server under
# /usr/lib/postgresql, else what pg_config or psql report, else Debian's.
wo_detect_postgres() {
    local version=
    PG_MAJOR=${PG_MAJOR:-}
    if [ -z "$PG_MAJOR" ]; then
        PG_MAJOR=$(ls /usr/lib/postgresql 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -n 1)
    fi
    if [ -z "$PG_MAJOR" ]; then
        version=$(pg_config --version 2>/dev/null || psql --version 2>/dev/null || true)
        PG_MAJOR=$(echo "$version" | sed -nE 's/.* ([0-9]+)[.a-z].*/\1/p' | head -n 1)
    fi
    PG_MAJOR=${PG_MAJOR:-$WO_PG_MAJOR_DEFAULT}
    PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
    PG_CONFIG=$PG_BINDIR/pg_config
    export PG_MAJOR PG_BINDIR PG_CONFIG
}

# Install, with apt, whatever is missing of what building and testing need,
# plus the packages given as arguments.  Quiet when nothing is missing.
wo_install_packages() {
    local wanted missing=() package
    wo_detect_postgres
    wanted=(postgresql-"$PG_MAJOR" postgresql-server-dev-"$PG_MAJOR"
            libcurl4-openssl-dev libssl-dev pkg-config libipc-run-perl
            python3 make gcc "$@")
    for package in "${wanted[@]}"; do
        if ! dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii'; then
            missing+=("$package")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0

    echo "installing: ${missing[*]}"
    wo_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        wo_die "apt-get update failed"
    wo_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null ||
        wo_die "could not install: ${missing[*]}"
}

# Build the extension with warnings as errors and install it.
wo_build_and_install() {
    wo_detect_postgres
    make -C "$WO_ROOT" -s PG_CONFIG="$PG_CONFIG" PG_CFLAGS="$WO_CFLAGS" ||
        wo_die "build failed"
    wo_as_root make -C "$WO_ROOT" -s PG_CONFIG="$PG_CONFIG" install ||
        wo_die "make install failed"
}

# Set WO_WORKDIR to where server-side steps run.  As root: a fresh copy of
# the repository owned by $WO_USER (created with the user on first use, then
# reused by later calls in the same script).  Otherwise: the repository.
wo_workdir() {
    if [ "$(id -u)" -ne 0 ]; then
        export WO_WORKDIR=$WO_ROOT
        return
    fi
    [ -n "${WO_WORKDIR:-}" ] && [ -d "$WO_WORKDIR" ] && return

    if ! id -u "$WO_USER" >/dev/null 2>&1; then
        useradd --system --create-home --shell /bin/bash "$WO_USER" ||
            wo_die "could not create user \"$WO_USER\""
    fi
    export WO_WORKDIR
    WO_WORKDIR=$(mktemp -d /tmp/webhook_outbox.XXXXXX)
    tar -C "$WO_ROOT" -cf - \
        --exclude=./.git --exclude='./tmp_check*' --exclude=./results \
        --exclude='./regression.*' --exclude=./log . |
        tar -C "$WO_WORKDIR" -xf - || wo_die "could not copy the tree to $WO_WORKDIR"
    chown -R "$WO_USER": "$WO_WORKDIR"
    chmod 755 "$WO_WORKDIR"
}

# Remove WO_WORKDIR if it is a copy (never the repository itself).
wo_remove_workdir() {
    if [ -n "${WO_WORKDIR:-}" ] && [ "$WO_WORKDIR" != "$WO_ROOT" ]; then
        rm -rf "$WO_WORKDIR"
    fi
    unset WO_WORKDIR
}

# Run CMD (an argument vector: use bash -c '...' for shell code, env VAR=...
# for more variables) in WO_WORKDIR, as a user PostgreSQL accepts: $WO_USER
# when we are root, else ourselves.  Returns CMD's exit status.
wo_as_unprivileged() {
    wo_detect_postgres
    wo_workdir
    if [ "$(id -u)" -ne 0 ]; then
        (cd "$WO_WORKDIR" && "$@")
        return
    fi
    runuser -u "$WO_USER" -- env -i \
        HOME="$(getent passwd "$WO_USER" | cut -d: -f6)" \
        USER="$WO_USER" LOGNAME="$WO_USER" SHELL=/bin/bash \
        PATH="$PG_BINDIR:/usr/local/bin:/usr/bin:/bin" \
        LANG="${LANG:-C.UTF-8}" ${LC_ALL:+LC_ALL="$LC_ALL"} ${TZ:+TZ="$TZ"} \
        ${CI:+CI="$CI"} PG_MAJOR="$PG_MAJOR" PG_BINDIR="$PG_BINDIR" \
        PG_CONFIG="$PG_CONFIG" WO_WORKDIR="$WO_WORKDIR" \
        bash -c 'cd "$WO_WORKDIR" && exec "$@"' wo_as_unprivileged "$@"
}

# Set TAP_PASSED and TAP_FAILED from prove's output in the file $1 and its
# exit status $2. prove prints "<file> .. ok" (or "skipped") per passing
# file and "Files=N, ..." at the end; every other file failed.
wo_count_tap() {
    local log=$1 status=$2 total
    TAP_PASSED=$(grep -cE '^\S+\.pl \.+ (ok|skipped)' "$log")
    total=$(sed -nE 's/^Files=([0-9]+),.*/\1/p' "$log" | tail -n 1)
    TAP_FAILED=$(( ${total:-$TAP_PASSED} - TAP_PASSED ))
    if [ "$status" -ne 0 ] && [ "$TAP_FAILED" -le 0 ]; then
        TAP_FAILED=1            # prove did not run, or failed outside a test
    fi
}
