# Shared by scripts/bench.sh and scripts/bench_pg.sh (sourced, not run).
# Needs: $work (a scratch directory) and $results (the TSV to append to). Optional: $measure_extra,
# further tab-separated columns appended to every row.

# Passwords of the throw-away repositories, when the caller has not set them.
export TRESOR_PASSWORD=${TRESOR_PASSWORD:-bench} RESTIC_PASSWORD=${RESTIC_PASSWORD:-bench} BORG_PASSPHRASE=${BORG_PASSPHRASE:-bench}
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes

# Run a command under /usr/bin/time; append tool, phase, wall s, CPU s, peak KiB, repository bytes.
measure() { # tool phase repo command...
    local tool=$1 phase=$2 repo=$3; shift 3
    sync
    /usr/bin/time -f '%e %U %S %M' -o "$work/time.out" "$@" > "$work/$tool-$phase.log" 2>&1 || {
        echo "$tool $phase failed:"; tail -20 "$work/$tool-$phase.log"; exit 1; }
    local wall user sys peak
    read -r wall user sys peak < "$work/time.out"
    printf '%s\t%s\t%s\t%s\t%s\t%s%s\n' "$tool" "$phase" "$wall" "$(echo "$user + $sys" | bc)" "$peak" \
        "$(du -sb "$repo" | cut -f1)" "${measure_extra:+$'\t'$measure_extra}" | tee -a "$results"
}

# The borg settings every benchmark compares against.
borg_create() { borg create --compression zstd,3 "$1::s$(date +%s%N)" "$2"; }
export -f borg_create
