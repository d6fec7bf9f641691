#!/usr/bin/env bash
# A real one-node Slurm on loopback (munge + slurmctld + slurmd from Debian's packages) for testing
# the cluster hand-off (tests/cluster/test_slurm.py, docs/cluster.md). Needs root and no systemd.
#
#   bash scripts/slurm_local.sh install       # apt-get install munge slurmctld slurmd slurm-client
#   bash scripts/slurm_local.sh start DIR     # config, state, logs and pid files under DIR
#   bash scripts/slurm_local.sh stop DIR      # stops the daemons started there, by their pid files
#
# The configuration is written under DIR and linked from /etc/slurm/{slurm,gres}.conf, where
# clients look: SLURM_CONF alone is not enough, because the plugin's job step (jobstep 0.6.1)
# drops every SLURM_* variable but the job's identity before its inner srun. `start` refuses to
# replace an /etc/slurm/slurm.conf that is not one of its links; `stop` removes its links.
#
# The node is `localhost` with two partitions named like the placeholders of
# workflow/profiles/slurm: `cpu` (default) and `gpu`. It declares two placeholder GPUs (gres
# gpu:2 backed by dummy device files) so GPU jobs are accepted and scheduled as on a GPU cluster
# (the request shows in `scontrol show job`), and more CPUs and memory than this machine has
# (SlurmdParameters=config_overrides) so jobs keep the profile's real requests. Nothing is
# enforced (task/none): the jobs share the real cores. Ports: SLURM_LOCAL_CTLD_PORT (6817),
# SLURM_LOCAL_SLURMD_PORT (6818).
set -euo pipefail

MARKER="Written by scripts/slurm_local.sh"

die() {
    echo "slurm_local.sh: $*" >&2
    exit 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "install needs root (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
}

# munged is machine-wide (/run/munge); start it only when none answers, and remember that we did.
start_munge() {
    local dir=$1
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            cat /run/munge/munged.pid >"$dir/munged.pid"
            return 0
        fi
        sleep 0.1
    done
    die "munged did not start (see /var/log/munge/munged.log)"
}

write_config() {
    local dir=$1 ctld_port=${SLURM_LOCAL_CTLD_PORT:-6817} slurmd_port=${SLURM_LOCAL_SLURMD_PORT:-6818}
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$dir/slurm.conf" <<EOF
# $MARKER: a one-node test cluster on 127.0.0.1.
ClusterName=dialogclip-local
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue/scontrol for 30 minutes: snakemake's squeue status
# queries (no slurmdbd here) and the test's look at what each job requested, after a run of
# several minutes, need them.
MinJobAge=1800
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=16 RealMemory=131072 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
    # Two placeholder GPUs. Slurm 22.05 drops a GPU gres without device files, so each gets a
    # character device of its own that is a copy of /dev/null (nothing ever opens it).
    mkdir -p "$dir/dev"
    local i
    for i in 0 1; do
        [[ -c $dir/dev/gpu$i ]] || mknod -m 0666 "$dir/dev/gpu$i" c 1 3
    done
    cat >"$dir/gres.conf" <<EOF
# $MARKER.
AutoDetect=off
NodeName=localhost Name=gpu File=$dir/dev/gpu[0-1]
EOF
}

# Link /etc/slurm/NAME to DIR/NAME, replacing only a link this script made (its target, if any,
# starts with our marker line).
link_config() {
    local dir=$1 name=$2 target=/etc/slurm/$2
    if [[ -e $target || -L $target ]]; then
        if [[ ! -L $target ]] || { [[ -e $target ]] && ! head -n1 "$target" | grep -q "$MARKER"; }; then
            die "$target exists and is not a link made by this script; not replacing it"
        fi
    fi
    mkdir -p /etc/slurm
    ln -sfn "$dir/$name" "$target"
}

unlink_config() {
    local dir=$1 name=$2 target=/etc/slurm/$2
    if [[ -L $target && $(readlink "$target") == "$dir/$name" ]]; then
        rm -f "$target"
    fi
}

start() {
    local dir
    dir=$(realpath -m "${1:?usage: slurm_local.sh start DIR}")
    command -v slurmctld >/dev/null || die "Slurm is not installed: run 'bash scripts/slurm_local.sh install'"
    [[ $(id -u) == 0 ]] || die "start needs root (SlurmUser=root)"
    mkdir -p "$dir"
    write_config "$dir"
    link_config "$dir" slurm.conf
    link_config "$dir" gres.conf
    start_munge "$dir"
    slurmctld -c
    slurmd -N localhost
    local state=""
    for _ in $(seq 150); do
        state=$(sinfo -h -n localhost -o %t 2>/dev/null | head -n1 || true)
        # inval/drain: slurmctld rejected the node's registration; waiting will not help.
        [[ $state == idle || $state == inval || $state == drain ]] && break
        sleep 0.2
    done
    if [[ $state != idle ]]; then
        tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
        stop "$dir"
        die "node localhost is '${state:-not known}', not idle (logs above, under $dir/log)"
    fi
}

stop_pidfile() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    local dir
    dir=$(realpath -m "${1:?usage: slurm_local.sh stop DIR}")
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"  # only present when start() launched munged
    unlink_config "$dir" slurm.conf
    unlink_config "$dir" gres.conf
}

case "${1:-}" in
    install) install_packages ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    *) die "usage: slurm_local.sh install | start DIR | stop DIR" ;;
esac
