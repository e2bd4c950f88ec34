#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for palisweep's Slurm tests.
# Needs root (munged and slurmd run as root) and Debian's slurm-wlm and
# munge packages (`install` adds them when missing).
#
#   scripts/slurm/test-cluster.sh install   # apt-get install slurm-wlm munge (root)
#   scripts/slurm/test-cluster.sh start     # prints: export SLURM_CONF=...
#   scripts/slurm/test-cluster.sh stop
#   scripts/slurm/test-cluster.sh status
#
# The node is named after `hostname -s`, has two made-up GPUs (gres on
# /dev/null and /dev/zero: jobs asking --gres=gpu:1 run two at a time, each
# with its own CUDA_VISIBLE_DEVICES) and every core and most of the memory.
# Everything lives in $SLURM_TEST_DIR (default /tmp/palisweep-slurm).
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/palisweep-slurm}
CONF="$DIR/slurm.conf"

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "test-cluster.sh: $1 needs root (munged and slurmd run as root)" >&2
        exit 2
    fi
}

install() {
    need_root install
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # Leave the OS some memory; Slurm does not enforce it here (no cgroups).
    mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<CONF
ClusterName=palisweep-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
KillWait=10
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    cat >"$DIR/gres.conf" <<CONF
NodeName=$host Name=gpu File=/dev/null
NodeName=$host Name=gpu File=/dev/zero
CONF
}

start_munge() {
    if pgrep -x munged >/dev/null; then
        return
    fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
}

start() {
    need_root start
    install
    stop_daemons
    rm -rf "$DIR"
    write_config
    start_munge
    export SLURM_CONF="$CONF"
    slurmctld -c -f "$CONF"
    slurmd -f "$CONF"
    # Wait until the node takes jobs.
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    echo "test-cluster.sh: the node never became idle; see $DIR/log/" >&2
    sinfo >&2 || true
    exit 1
}

stop_daemons() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    for _ in $(seq 1 20); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
        sleep 0.25
    done
    pkill -9 -x slurmd 2>/dev/null || true
    pkill -9 -x slurmctld 2>/dev/null || true
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop_daemons ;;
status) SLURM_CONF="$CONF" sinfo ;;
*)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
