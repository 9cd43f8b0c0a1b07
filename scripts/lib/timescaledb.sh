# shellcheck shell=bash
# scripts/lib/timescaledb.sh - make TimescaleDB (Apache-2 edition) available and
# preloaded in a running Debian PostgreSQL cluster, idempotently.
#
# Sourced by the bootstrap script (bash, `set -euo pipefail`, running as root).
# Public functions (MAJOR CLUSTER PORT as reported by pg_lsclusters):
#
#   tsdb_state  MAJOR CLUSTER PORT   prints loaded | installed | absent
#   tsdb_ensure MAJOR CLUSTER PORT   brings the cluster to `loaded`
#
# How tsdb_ensure gets the extension (see DESIGN.md, "Store"):
#   * If apt has a candidate for postgresql-MAJOR-timescaledb (Debian 13 may),
#     that binary package is installed.
#   * Otherwise Debian's `timescaledb` source package is built.  The archive is
#     found only through the machine's own apt configuration: deb-src entries
#     are derived from the configured `deb` entries (same URIs, components and
#     options such as Signed-By) into a private apt configuration under
#     $MW_STATE_DIR/timescaledb/apt, which never touches /etc/apt or the
#     system's lists.  The configured suites are tried first; Debian 12's own
#     suites do not carry timescaledb, so the same archive's `<codename>-backports`
#     and `stable` suites are tried next, then `oldstable` and `testing`.  The
#     first version whose build configuration accepts this PostgreSQL major wins.
#     No host name, file name or version is written here.
#   * Headers come from the postgresql-server-dev-MAJOR .deb fetched with
#     `apt-get download` and unpacked with `dpkg -x` (installing that package
#     can upgrade and restart the running server).  A generated pg_config
#     wrapper answers with the RUNNING server's own pg_config values (the
#     pg_config view), except that the include directories point into the
#     unpacked headers.
#
# Integrity: the private `apt-get update` only accepts Release/InRelease files
# whose OpenPGP signature verifies against the keyring named by the configured
# entry (Signed-By, or apt's trusted keyrings); `apt-get source` then checks the
# .dsc and tarballs against the SHA256 sums of that signed Sources index (a
# mismatch aborts the download), and `dpkg-source -x` re-checks the tarballs
# against the sizes/checksums listed in the .dsc (a mismatch is a hard error).
# The .dsc's own maintainer signature is only checked if debian-keyring happens
# to be installed (dpkg-source warns otherwise); the archive-signed index above
# is the trust anchor, as for any apt download.  `apt-get download` likewise
# checks the headers .deb against the signed Packages index.  Insecure
# repositories and unauthenticated downloads are explicitly refused below.
#
# Concurrent runs against the same cluster (even with different MW_STATE_DIRs)
# are serialised with flock on /run/lock/meterward-timescaledb-MAJOR-CLUSTER.lock.
#
# Private working files live in ${MW_STATE_DIR}/timescaledb/ (apt lists, the
# downloaded source, unpacked headers, build trees, logs); downloaded sources
# and finished builds are reused when the archive still has the same version.

# Prefix for every progress line.
_TSDB_P='  timescaledb:'

_tsdb_say() { printf '%s %s\n' "$_TSDB_P" "$*"; }

# One-line failure reason on stderr; always returns 1.
_tsdb_fail() {
    printf '%s error: %s\n' "$_TSDB_P" "$*" >&2
    return 1
}

_tsdb_check_args() {
    if [[ $# -ne 3 || ! $1 =~ ^[0-9]+$ || -z $2 || ! $3 =~ ^[0-9]+$ ]]; then
        _tsdb_fail "usage: tsdb_state|tsdb_ensure MAJOR CLUSTER PORT (got: $*)"
        return 1
    fi
}

# _tsdb_psql PORT SQL -- query the server as OS user postgres over the Unix
# socket (peer auth), immune to the caller's PG* environment and cwd.
_tsdb_psql() {
    (
        unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGSERVICEFILE \
            PGOPTIONS PGPASSWORD PGPASSFILE PGSSLMODE PGCLUSTER PGCONNECT_TIMEOUT
        cd / && runuser -u postgres -- psql -X -p "$1" -d postgres \
            -v ON_ERROR_STOP=1 -F $'\x1f' -Atqc "$2"
    )
}

# _tsdb_list_has LIST NAME -- does a comma separated GUC list contain NAME?
_tsdb_list_has() {
    local item
    local -a items
    IFS=',' read -r -a items <<<"$1"
    for item in "${items[@]}"; do
        item=${item//[[:space:]\"]/}
        item=${item##*/}
        [[ $item == "$2" || $item == "$2.so" ]] && return 0
    done
    return 1
}

# Probe the running server: sets _tsdb_dv (default_version or ''),
# _tsdb_preload (running shared_preload_libraries), _tsdb_libdir, _tsdb_sharedir.
_tsdb_probe() {
    local out
    out=$(_tsdb_psql "$1" "SELECT coalesce((SELECT default_version FROM pg_available_extensions
                                            WHERE name = 'timescaledb'), ''),
                                  current_setting('shared_preload_libraries'),
                                  (SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'),
                                  (SELECT setting FROM pg_config WHERE name = 'SHAREDIR')" 2>&1) ||
        { _tsdb_fail "cannot query the cluster on port $1 as user postgres: ${out//$'\n'/ }"; return 1; }
    IFS=$'\x1f' read -r _tsdb_dv _tsdb_preload _tsdb_libdir _tsdb_sharedir <<<"$out"
    if [[ -z $_tsdb_libdir || -z $_tsdb_sharedir ]]; then
        _tsdb_fail "unexpected answer from the cluster on port $1: $out"
        return 1
    fi
}

tsdb_state() {
    _tsdb_check_args "$@" || return 1
    local _tsdb_dv _tsdb_preload _tsdb_libdir _tsdb_sharedir
    _tsdb_probe "$3" || return 1
    if [[ -n $_tsdb_dv && -e $_tsdb_libdir/timescaledb.so && -e $_tsdb_libdir/timescaledb-$_tsdb_dv.so ]]; then
        if _tsdb_list_has "$_tsdb_preload" timescaledb; then
            echo loaded
        else
            echo installed
        fi
    else
        echo absent
    fi
}

# ---------------------------------------------------------------------------
# apt helpers

# Run the system's apt-get non-interactively.
_tsdb_apt() {
    DEBIAN_FRONTEND=noninteractive apt-get -q \
        -o Acquire::AllowInsecureRepositories=false \
        -o APT::Get::AllowUnauthenticated=false "$@"
}

# Refresh the system's package lists once per tsdb_ensure call (lists are state,
# not configuration); used when they are missing or an install/download fails.
_tsdb_sys_update() {
    [[ ${_tsdb_sys_updated:-} == 1 ]] && return 0
    _tsdb_sys_updated=1
    _tsdb_say "refreshing apt package lists"
    _tsdb_apt update >>"$_tsdb_log" 2>&1 ||
        _tsdb_say "apt-get update reported problems (see $_tsdb_log), continuing"
}

_tsdb_sys_lists_present() {
    local f
    for f in /var/lib/apt/lists/*_Packages*; do
        [[ -e $f ]] && return 0
    done
    return 1
}

# Candidate version of a binary package in the system's apt, or ''.
_tsdb_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    [[ $c == '(none)' ]] && c=''
    printf '%s' "$c"
}

# The private apt used for source indexes: its own lists, caches and source
# list (derived deb-src entries); everything else from the machine's config.
_tsdb_papt() {
    local tool=$1
    shift
    "$tool" -q \
        -o Dir::Etc::SourceList=/dev/null \
        -o Dir::Etc::SourceParts="$_tsdb_aptdir/parts" \
        -o Dir::State::Lists="$_tsdb_aptdir/lists" \
        -o Dir::Cache="$_tsdb_aptdir/cache" \
        -o APT::Get::List-Cleanup=false \
        -o Acquire::Languages=none \
        -o Acquire::AllowInsecureRepositories=false \
        -o APT::Get::AllowUnauthenticated=false \
        "$@"
}

# _tsdb_write_sources TIER EXTRA_SUITES -- write deb-src entries derived from
# the machine's configured `deb` entries.  With EXTRA_SUITES empty: same URIs,
# suites, components and options.  Otherwise: for entries that carry a main
# archive suite (no '-' or '/' in its name, i.e. not -updates/-security/flat),
# the same URIs/components/options with Suites replaced by EXTRA_SUITES.
_tsdb_write_sources() {
    local tier=$1 extra=$2 sl sp f
    local -a deb822=() onel=()
    sl=/etc/apt/sources.list
    sp=/etc/apt/sources.list.d
    eval "$(apt-config shell sl Dir::Etc::SourceList/f sp Dir::Etc::SourceParts/d)"
    [[ -f $sl ]] && onel+=("$sl")
    for f in "${sp%/}"/*.list; do [[ -f $f ]] && onel+=("$f"); done
    for f in "${sp%/}"/*.sources; do [[ -f $f ]] && deb822+=("$f"); done

    : >"$_tsdb_aptdir/parts/tier$tier.sources"
    : >"$_tsdb_aptdir/parts/tier$tier.list"
    if ((${#deb822[@]})); then
        awk -v extra="$extra" '
            function flush(   i, types, suites, enabled, ns, arr, k, keep) {
                if (n == 0) return
                types = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= n; i++) {
                    if (key[i] == "types") types = val[i]
                    else if (key[i] == "suites") suites = val[i]
                    else if (key[i] == "enabled") enabled = tolower(val[i])
                }
                gsub(/[ \t\n]+/, " ", types); types = " " types " "
                gsub(/[ \t\n]+/, " ", suites); gsub(/^ | $/, "", suites)
                gsub(/[ \t\n]+/, "", enabled)
                if (enabled == "no" || index(types, " deb ") == 0 || suites == "") { n = 0; return }
                if (extra != "") {
                    ns = split(suites, arr, " "); keep = 0
                    for (k = 1; k <= ns; k++) if (arr[k] !~ /[-\/]/) keep = 1
                    if (!keep) { n = 0; return }
                    suites = extra
                }
                print "Types: deb-src"
                print "Suites: " suites
                for (i = 1; i <= n; i++) if (key[i] != "types" && key[i] != "suites") print raw[i]
                print ""
                n = 0
            }
            FNR == 1 { flush() }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { if (n > 0) { raw[n] = raw[n] "\n" $0; val[n] = val[n] "\n" $0 }; next }
            {
                n++; p = index($0, ":")
                key[n] = tolower(substr($0, 1, p - 1))
                v = substr($0, p + 1); sub(/^[ \t]+/, "", v)
                val[n] = v; raw[n] = $0
            }
            END { flush() }
        ' "${deb822[@]}" >"$_tsdb_aptdir/parts/tier$tier.sources" || return 1
    fi
    if ((${#onel[@]})); then
        awk -v extra="$extra" '
            { sub(/#.*/, "") }
            $1 != "deb" { next }
            {
                line = $0; sub(/^[ \t]*deb[ \t]+/, "", line); opts = ""
                if (substr(line, 1, 1) == "[") {
                    p = index(line, "]"); if (p == 0) next
                    opts = substr(line, 1, p) " "; line = substr(line, p + 1); sub(/^[ \t]+/, "", line)
                }
                sub(/[ \t]+$/, "", line)
                n = split(line, f, /[ \t]+/)
                if (n < 2) next
                if (extra == "") { print "deb-src " opts line; next }
                if (f[2] ~ /[-\/]/) next
                comps = ""; for (i = 3; i <= n; i++) comps = comps " " f[i]
                m = split(extra, e, " ")
                for (j = 1; j <= m; j++) print "deb-src " opts f[1] " " e[j] comps
            }
        ' "${onel[@]}" >"$_tsdb_aptdir/parts/tier$tier.list" || return 1
    fi
    [[ -s $_tsdb_aptdir/parts/tier$tier.sources || -s $_tsdb_aptdir/parts/tier$tier.list ]]
}

# Print "suite version" for every timescaledb source in the private indexes.
_tsdb_src_versions() {
    _tsdb_papt apt-cache madison timescaledb 2>/dev/null |
        awk -F'|' '$1 ~ /^ *timescaledb *$/ && $3 ~ /Sources/ {
            v = $2; gsub(/ /, "", v); split($3, a, " "); s = a[2]; sub(/\/.*/, "", s)
            print s, v }'
}

# Sort Debian versions (one per line on stdin) newest first, without duplicates.
_tsdb_sort_desc() {
    local v i j t
    local -a vs=()
    while read -r v; do
        [[ -n $v ]] || continue
        for t in "${vs[@]}"; do [[ $t == "$v" ]] && continue 2; done
        vs+=("$v")
    done
    for ((i = 1; i < ${#vs[@]}; i++)); do
        for ((j = i; j > 0; j--)); do
            if dpkg --compare-versions "${vs[j]}" gt "${vs[j - 1]}"; then
                t=${vs[j]}; vs[j]=${vs[j - 1]}; vs[j - 1]=$t
            else
                break
            fi
        done
    done
    ((${#vs[@]})) && printf '%s\n' "${vs[@]}"
    return 0
}

# ---------------------------------------------------------------------------
# build helpers

# Install whatever build tools are missing (checked with command -v first).
_tsdb_build_tools() {
    local -a need=()
    command -v cmake >/dev/null || need+=(cmake)
    command -v make >/dev/null || need+=(make)
    command -v gcc >/dev/null || need+=(gcc)
    [[ -e /usr/include/stdio.h ]] || need+=(libc6-dev)
    command -v dpkg-source >/dev/null || need+=(dpkg-dev)
    command -v patch >/dev/null || need+=(patch)
    command -v xz >/dev/null || need+=(xz-utils)
    ((${#need[@]})) || return 0
    _tsdb_say "installing build tools: ${need[*]}"
    _tsdb_sys_lists_present || _tsdb_sys_update
    if ! _tsdb_apt install -y --no-install-recommends "${need[@]}" >>"$_tsdb_log" 2>&1; then
        _tsdb_sys_update
        _tsdb_apt install -y --no-install-recommends "${need[@]}" >>"$_tsdb_log" 2>&1 ||
            { _tsdb_fail "could not install build tools (${need[*]}), see $_tsdb_log"; return 1; }
    fi
}

# Fetch and unpack postgresql-server-dev-MAJOR (never installed); sets
# _tsdb_incserver to the unpacked server include directory.
# Args: MAJOR RUNNING_DEBIAN_VERSION INCLUDEDIR_SERVER_OF_RUNNING_SERVER
_tsdb_headers() {
    local major=$1 want=$2 incsrv=$3 pkg dir v deb attempt cand
    pkg=postgresql-server-dev-$major
    for attempt in 1 2; do
        # Prefer headers of exactly the running server's version, else apt's candidate.
        cand=$(_tsdb_candidate "$pkg")
        [[ $cand == "$want" ]] && cand=''
        for v in "$want" "$cand"; do
            [[ -n $v ]] || continue
            dir=$_tsdb_dir/pgdev/${v//[^A-Za-z0-9.+~-]/_}
            if [[ -e $dir/root$incsrv/postgres.h ]]; then
                _tsdb_incserver=$dir/root$incsrv
                return 0
            fi
            rm -rf "$dir" && mkdir -p "$dir/dl" || return 1
            _tsdb_chown_apt "$dir/dl"
            _tsdb_say "fetching $pkg $v headers (apt-get download, not installed)"
            if (cd "$dir/dl" && _tsdb_apt download "$pkg=$v") >>"$_tsdb_log" 2>&1; then
                for deb in "$dir"/dl/*.deb; do
                    dpkg -x "$deb" "$dir/root" >>"$_tsdb_log" 2>&1 ||
                        { _tsdb_fail "could not unpack $deb"; return 1; }
                done
                if [[ -e $dir/root$incsrv/postgres.h ]]; then
                    _tsdb_incserver=$dir/root$incsrv
                    return 0
                fi
                _tsdb_fail "$pkg $v has no $incsrv/postgres.h"
                return 1
            fi
        done
        [[ $attempt == 1 ]] && _tsdb_sys_update
    done
    _tsdb_fail "could not download $pkg (see $_tsdb_log)"
    return 1
}

# Let apt's download sandbox user write into a private download directory.
_tsdb_chown_apt() {
    if getent passwd _apt >/dev/null 2>&1; then
        chown _apt "$1" 2>/dev/null || true
    fi
}

# Write a pg_config wrapper answering with the running server's values (from
# the pg_config view), include directories redirected to the unpacked headers.
_tsdb_pg_config_wrapper() {
    local port=$1 out=$2 rows name value
    rows=$(_tsdb_psql "$port" "SELECT name, setting FROM pg_config") ||
        { _tsdb_fail "cannot read pg_config view"; return 1; }
    {
        echo '#!/bin/bash'
        echo '# generated by scripts/lib/timescaledb.sh: the running server'"'"'s pg_config'
        echo 'declare -A v'
        while IFS=$'\x1f' read -r name value; do
            case $name in
                INCLUDEDIR | PKGINCLUDEDIR | INCLUDEDIR-SERVER) value=$_tsdb_incserver ;;
                PGXS) [[ -e $_tsdb_devroot$value ]] && value=$_tsdb_devroot$value ;;
            esac
            printf 'v[%q]=%q\n' "$name" "$value"
        done <<<"$rows"
        # shellcheck disable=SC2016 # literal code for the generated script
        printf '%s\n' \
            'if (($# == 0)); then for k in "${!v[@]}"; do printf "%s = %s\n" "$k" "${v[$k]}"; done; exit 0; fi' \
            'for a in "$@"; do k=${a#--}; k=${k^^}' \
            '  [[ -v v[$k] ]] || { echo "pg_config: invalid argument: $a" >&2; exit 1; }' \
            '  printf "%s\n" "${v[$k]}"; done'
    } >"$out" && chmod 0755 "$out"
}

# Download (or reuse) source version VER, configure and build it; on success
# sets _tsdb_stage to a DESTDIR tree holding the installed files.
# Args: VER PORT MAJOR PGDEBVER
_tsdb_build_version() {
    local ver=$1 port=$2 major=$3 pgver=$4 key src bdir upver dsc ssl=OFF f
    local nover=${ver#*:}
    key=$(printf '%s_pg%s' "$nover" "$pgver" | tr -c 'A-Za-z0-9.+~_\n-' '_')
    bdir=$_tsdb_dir/build/$key
    if [[ -e $bdir/stage/.complete ]]; then
        _tsdb_stage=$bdir/stage
        _tsdb_say "reusing earlier build of $ver for PostgreSQL $pgver"
        return 0
    fi

    # Source: apt-get source picks the files of VER from the signed Sources
    # index, checks their SHA256 (files already present and matching are not
    # fetched again).
    mkdir -p "$_tsdb_dir/src" && _tsdb_chown_apt "$_tsdb_dir/src"
    _tsdb_say "fetching timescaledb $ver source (apt-get source, checksums verified)"
    (cd "$_tsdb_dir/src" && _tsdb_papt apt-get source --download-only "timescaledb=$ver") \
        >>"$_tsdb_log" 2>&1 || { _tsdb_fail "apt-get source timescaledb=$ver failed (see $_tsdb_log)"; return 1; }
    dsc=$_tsdb_dir/src/timescaledb_$nover.dsc
    [[ -f $dsc ]] || { _tsdb_fail "apt-get source did not produce $dsc"; return 1; }
    # Drop other versions' files so the cache holds only what is current.
    for f in "$_tsdb_dir"/src/timescaledb_*; do
        [[ -e $f ]] || continue
        case ${f##*/} in
            "timescaledb_$nover".* | "timescaledb_${nover%-*}".orig*) ;;
            *) rm -f "$f" ;;
        esac
    done

    rm -rf "$bdir" && mkdir -p "$bdir" || return 1
    src=$bdir/src
    # dpkg-source -x re-verifies the tarballs against the .dsc checksums.
    dpkg-source -x "$dsc" "$src" >>"$_tsdb_log" 2>&1 ||
        { _tsdb_fail "dpkg-source -x $dsc failed (see $_tsdb_log)"; return 1; }

    _tsdb_pg_config_wrapper "$port" "$bdir/pg_config" || return 1
    if [[ -e /usr/include/openssl/ssl.h ]] && grep -q '^#define USE_OPENSSL 1' "$_tsdb_incserver/pg_config.h"; then
        ssl=ON
    fi
    _tsdb_say "building timescaledb $ver from source for PostgreSQL $pgver"
    # The build asks git for commit info; keep it from finding an enclosing
    # repository (MW_STATE_DIR may live inside the project checkout).
    local -x GIT_CEILING_DIRECTORIES=$_tsdb_dir
    {
        echo "== cmake configure $ver"
        cmake -S "$src" -B "$bdir/build" \
            -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            -DPG_CONFIG="$bdir/pg_config" \
            -DAPACHE_ONLY=ON \
            -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
            -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF \
            -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF \
            -DUSE_OPENSSL="$ssl"
    } >>"$_tsdb_log" 2>&1 || { _tsdb_configure_failed=1; return 1; }
    {
        echo "== cmake build $ver"
        cmake --build "$bdir/build" --parallel "$(nproc 2>/dev/null || echo 2)" &&
            DESTDIR="$bdir/stage" cmake --install "$bdir/build"
    } >>"$_tsdb_log" 2>&1 || { _tsdb_fail "building timescaledb $ver failed (see $_tsdb_log)"; return 1; }
    upver=$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$bdir/stage$_tsdb_sharedir/extension/timescaledb.control" 2>/dev/null)
    if [[ -z $upver || ! -e $bdir/stage$_tsdb_libdir/timescaledb.so || ! -e $bdir/stage$_tsdb_libdir/timescaledb-$upver.so ]]; then
        _tsdb_fail "build of $ver did not produce the expected files under $bdir/stage"
        return 1
    fi
    touch "$bdir/stage/.complete"
    _tsdb_stage=$bdir/stage
}

# Copy a staged build into the running server's pkglibdir and extension dir
# (libraries first, control file last).
_tsdb_install_stage() {
    local stage=$1 f extdir=$_tsdb_sharedir/extension n=0
    for f in "$stage$_tsdb_libdir"/timescaledb*.so; do
        [[ -e $f ]] || continue
        install -m 0755 "$f" "$_tsdb_libdir/" || return 1
        n=$((n + 1))
    done
    for f in "$stage$extdir"/timescaledb*; do
        [[ -e $f && ${f##*/} != timescaledb.control ]] || continue
        install -m 0644 "$f" "$extdir/" || return 1
        n=$((n + 1))
    done
    install -m 0644 "$stage$extdir/timescaledb.control" "$extdir/" || return 1
    _tsdb_say "installed $((n + 1)) files into $_tsdb_libdir and $extdir"
}

# Build from Debian's source package and install into the running server.
_tsdb_from_source() {
    local major=$1 port=$2 pgver=$3 incsrv=$4 tier extra v s tried=' ' upd_ok
    local -a tiers=('' '' 'oldstable testing') cands=()
    local codename
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
    tiers[1]="${codename:+$codename-backports }stable"

    _tsdb_build_tools || return 1
    _tsdb_devroot=''
    _tsdb_headers "$major" "$pgver" "$incsrv" || return 1
    _tsdb_devroot=${_tsdb_incserver%"$incsrv"}

    _tsdb_aptdir=$_tsdb_dir/apt
    mkdir -p "$_tsdb_aptdir/parts" "$_tsdb_aptdir/lists/partial" "$_tsdb_aptdir/cache/archives/partial" || return 1
    rm -f "$_tsdb_aptdir"/parts/*

    for tier in 0 1 2; do
        extra=${tiers[tier]}
        if ! _tsdb_write_sources "$tier" "$extra"; then
            [[ $tier == 0 ]] && { _tsdb_fail "no usable 'deb' entries in the machine's apt sources"; return 1; }
            continue
        fi
        _tsdb_say "reading source index (${extra:-configured suites}) via the machine's apt sources"
        upd_ok=1
        _tsdb_papt apt-get update >>"$_tsdb_log" 2>&1 || upd_ok=0
        [[ $upd_ok == 1 ]] || _tsdb_say "apt-get update of the source index reported problems (see $_tsdb_log), continuing"
        # Candidates of this tier, in suite order, newest version first.
        cands=()
        if [[ -z $extra ]]; then
            mapfile -t cands < <(_tsdb_src_versions | awk '{print $2}' | _tsdb_sort_desc)
        else
            for s in $extra; do
                while read -r v; do cands+=("$v"); done < <(_tsdb_src_versions | awk -v s="$s" '$1 == s {print $2}' | _tsdb_sort_desc)
            done
        fi
        for v in "${cands[@]}"; do
            [[ $tried == *" $v "* ]] && continue
            tried+="$v "
            _tsdb_configure_failed=0
            if _tsdb_build_version "$v" "$port" "$major" "$pgver"; then
                _tsdb_install_stage "$_tsdb_stage" ||
                    { _tsdb_fail "could not install files into $_tsdb_libdir / $_tsdb_sharedir/extension"; return 1; }
                return 0
            fi
            [[ $_tsdb_configure_failed == 1 ]] || return 1
            _tsdb_say "timescaledb $v does not configure for PostgreSQL $pgver (see $_tsdb_log), trying another"
        done
    done
    if [[ $tried == ' ' ]]; then
        _tsdb_fail "no timescaledb source package found in the archives of the machine's apt sources (see $_tsdb_log)"
    else
        _tsdb_fail "no timescaledb source version builds for PostgreSQL $major (tried:${tried% }; see $_tsdb_log)"
    fi
    return 1
}

# ---------------------------------------------------------------------------

_tsdb_wait_ready() {
    local port=$1 i
    for ((i = 0; i < 120; i++)); do
        _tsdb_psql "$port" 'SELECT 1' >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

# Add timescaledb to shared_preload_libraries (keeping existing entries) and
# restart the cluster.  If it does not come back, the previous
# postgresql.auto.conf is restored and the cluster restarted without it.
_tsdb_preload() {
    local major=$1 cluster=$2 port=$3 cur datadir list item backup
    local -a items
    # The value that the next start would use: last one in the config files
    # (may already differ from the running value), else the running value.
    cur=$(_tsdb_psql "$port" "SELECT coalesce((SELECT setting FROM pg_file_settings
                                   WHERE name = 'shared_preload_libraries' ORDER BY seqno DESC LIMIT 1),
                               current_setting('shared_preload_libraries'))") ||
        { _tsdb_fail "cannot read shared_preload_libraries"; return 1; }
    datadir=$(_tsdb_psql "$port" 'SHOW data_directory') || { _tsdb_fail "cannot read data_directory"; return 1; }

    list=''
    IFS=',' read -r -a items <<<"$cur"
    for item in "${items[@]}"; do
        item=${item#"${item%%[![:space:]]*}"}
        item=${item%"${item##*[![:space:]]}"}
        [[ $item == \"*\" ]] && item=${item:1:${#item}-2}
        [[ -n $item ]] || continue
        list+="${list:+, }'${item//\'/\'\'}'"
    done
    _tsdb_list_has "$cur" timescaledb || list+="${list:+, }'timescaledb'"

    backup=$_tsdb_dir/postgresql.auto.conf.before-timescaledb
    cp -p "$datadir/postgresql.auto.conf" "$backup" ||
        { _tsdb_fail "cannot back up $datadir/postgresql.auto.conf"; return 1; }
    _tsdb_say "adding timescaledb to shared_preload_libraries (now: $list)"
    _tsdb_psql "$port" "ALTER SYSTEM SET shared_preload_libraries = $list" >>"$_tsdb_log" 2>&1 ||
        { _tsdb_fail "ALTER SYSTEM SET shared_preload_libraries failed (see $_tsdb_log)"; return 1; }

    # Telemetry: builds made here (and Debian's packages) leave the telemetry
    # code out, so the GUC usually does not exist; set it only where the
    # library defines it and the server accepts it.
    if grep -qaF telemetry_level "$_tsdb_libdir/timescaledb-$_tsdb_dv.so" 2>/dev/null; then
        if _tsdb_psql "$port" "ALTER SYSTEM SET timescaledb.telemetry_level = 'off'" >>"$_tsdb_log" 2>&1; then
            _tsdb_say "set timescaledb.telemetry_level = off"
        else
            _tsdb_say "timescaledb.telemetry_level not accepted, left alone"
        fi
    fi

    _tsdb_say "restarting cluster $major/$cluster"
    if pg_ctlcluster --skip-systemctl-redirect "$major" "$cluster" restart {_tsdb_lockfd}>&- >>"$_tsdb_log" 2>&1 &&
        _tsdb_wait_ready "$port"; then
        return 0
    fi
    # Put the previous configuration back so the cluster keeps running.
    pg_ctlcluster --skip-systemctl-redirect "$major" "$cluster" stop {_tsdb_lockfd}>&- >>"$_tsdb_log" 2>&1 || true
    cp -p "$backup" "$datadir/postgresql.auto.conf" || true
    pg_ctlcluster --skip-systemctl-redirect "$major" "$cluster" start {_tsdb_lockfd}>&- >>"$_tsdb_log" 2>&1 || true
    _tsdb_fail "cluster $major/$cluster did not restart with timescaledb preloaded; previous settings restored (see $_tsdb_log and /var/log/postgresql/postgresql-$major-$cluster.log)"
    return 1
}

tsdb_ensure() {
    _tsdb_check_args "$@" || return 1
    local major=$1 cluster=$2 port=$3 lockfile rc=0 _tsdb_lockfd
    local _tsdb_dv _tsdb_preload _tsdb_libdir _tsdb_sharedir
    # Fast path: already loaded -> one query, nothing else.
    _tsdb_probe "$port" || return 1
    if [[ -n $_tsdb_dv && -e $_tsdb_libdir/timescaledb.so && -e $_tsdb_libdir/timescaledb-$_tsdb_dv.so ]] &&
        _tsdb_list_has "$_tsdb_preload" timescaledb; then
        return 0
    fi

    [[ $(id -u) == 0 ]] || { _tsdb_fail "must run as root to install or preload the extension"; return 1; }
    mkdir -p "${MW_STATE_DIR:?MW_STATE_DIR must be set}/timescaledb/logs" ||
        { _tsdb_fail "cannot create $MW_STATE_DIR/timescaledb"; return 1; }
    # Serialise with other runs against the same cluster (they may use another
    # MW_STATE_DIR, e.g. a test's bootstrap), machine-wide.
    lockfile=/run/lock/meterward-timescaledb-$major-$cluster.lock
    [[ -d /run/lock && -w /run/lock ]] || lockfile=$MW_STATE_DIR/timescaledb/lock
    exec {_tsdb_lockfd}>>"$lockfile" || { _tsdb_fail "cannot open lock file $lockfile"; return 1; }
    if ! flock -n "$_tsdb_lockfd"; then
        _tsdb_say "waiting for another timescaledb setup of cluster $major/$cluster"
        flock -w 1800 "$_tsdb_lockfd" || rc=1
    fi
    if [[ $rc == 0 ]]; then
        _tsdb_ensure_locked "$major" "$cluster" "$port" || rc=$?
    else
        _tsdb_fail "timed out waiting for the lock $lockfile"
    fi
    exec {_tsdb_lockfd}>&-
    return "$rc"
}

# Body of tsdb_ensure, run while holding the lock (fd $_tsdb_lockfd, which
# must not leak into the restarted postmaster).
_tsdb_ensure_locked() {
    local major=$1 cluster=$2 port=$3 state pkg cand vstr pgver incsrv
    local _tsdb_dir _tsdb_log
    local _tsdb_aptdir _tsdb_stage _tsdb_incserver _tsdb_devroot _tsdb_configure_failed _tsdb_sys_updated
    # Re-check: another run may have finished while we waited for the lock.
    _tsdb_probe "$port" || return 1
    if [[ -n $_tsdb_dv && -e $_tsdb_libdir/timescaledb.so && -e $_tsdb_libdir/timescaledb-$_tsdb_dv.so ]]; then
        state=installed
        _tsdb_list_has "$_tsdb_preload" timescaledb && return 0
    else
        state=absent
    fi

    _tsdb_dir=$MW_STATE_DIR/timescaledb
    _tsdb_log=$_tsdb_dir/logs/ensure-$(date +%Y%m%d-%H%M%S).log
    : >"$_tsdb_log" || { _tsdb_fail "cannot write $_tsdb_log"; return 1; }

    if [[ $state == absent ]]; then
        pkg=postgresql-$major-timescaledb
        _tsdb_sys_lists_present || _tsdb_sys_update
        cand=$(_tsdb_candidate "$pkg")
        # Never let this install upgrade (and so restart) the server package.
        if [[ -n $cand ]] && _tsdb_apt -s install -y --no-install-recommends "$pkg" 2>/dev/null |
            grep -qE "^Inst postgresql-$major "; then
            _tsdb_say "apt's $pkg $cand would upgrade postgresql-$major, building from source instead"
            cand=''
        fi
        if [[ -n $cand ]]; then
            _tsdb_say "installing $pkg $cand with apt"
            _tsdb_apt install -y --no-install-recommends "$pkg" >>"$_tsdb_log" 2>&1 ||
                { _tsdb_fail "apt-get install $pkg failed (see $_tsdb_log)"; return 1; }
        else
            vstr=$(_tsdb_psql "$port" 'SELECT version()') || { _tsdb_fail "cannot read server version"; return 1; }
            # "PostgreSQL 15.20 (Debian 15.20-0+deb12u1) on ..." -> 15.20-0+deb12u1
            pgver=$(sed -n 's/^PostgreSQL [^ ]* (Debian \([^)]*\)).*/\1/p' <<<"$vstr")
            [[ -n $pgver ]] || pgver=$(sed -n 's/^PostgreSQL \([^ ]*\).*/\1/p' <<<"$vstr")
            incsrv=$(_tsdb_psql "$port" "SELECT setting FROM pg_config WHERE name = 'INCLUDEDIR-SERVER'") ||
                { _tsdb_fail "cannot read the server's INCLUDEDIR-SERVER"; return 1; }
            _tsdb_from_source "$major" "$port" "$pgver" "$incsrv" || return 1
        fi
        _tsdb_probe "$port" || return 1
        if [[ -z $_tsdb_dv || ! -e $_tsdb_libdir/timescaledb.so || ! -e $_tsdb_libdir/timescaledb-$_tsdb_dv.so ]]; then
            _tsdb_fail "timescaledb files installed but not visible in pg_available_extensions on port $port"
            return 1
        fi
        _tsdb_say "timescaledb $_tsdb_dv is in pg_available_extensions"
        _tsdb_list_has "$_tsdb_preload" timescaledb && return 0
    fi

    _tsdb_preload "$major" "$cluster" "$port" || return 1
    state=$(tsdb_state "$major" "$cluster" "$port") || return 1
    [[ $state == loaded ]] || { _tsdb_fail "state is '$state' after restart, expected 'loaded'"; return 1; }
    _tsdb_say "timescaledb $_tsdb_dv preloaded on cluster $major/$cluster"
}
