#!/usr/bin/env bash
# Brings up a one-node Slurm cluster on this machine (for the sweep's Slurm test, or to try
# `make sweep-slurm` without a cluster): installs Debian's slurmctld, slurmd and munge if
# missing, writes /etc/slurm/slurm.conf (node = `hostname -s` at 127.0.0.1, no accounting,
# proctrack/linuxproc, task/none, select/cons_tres), starts munged, slurmctld and slurmd in
# the background and waits until the node is idle. Needs root; no systemd needed.
#
# Usage: sudo bash scripts/slurm-local-up.sh        (scripts/slurm-local-down.sh stops it)
# SLURM_MAX_ARRAY_SIZE (default 1001, Slurm's own) lets a test force chunked job arrays.
# The daemons' pids go to $SLURM_LOCAL_STATE (default /run/aiq-slurm), so the down script
# stops exactly the processes this script started.
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/run/aiq-slurm}
CONF=/etc/slurm/slurm.conf
log() { echo "slurm-local-up: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (apt-get and the daemons)"; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  log "installing slurmctld slurmd munge (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# ---- munge: a key, a socket directory, the daemon -----------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge

running() { [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

if ! running munged; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null || { log "munge does not work (see /var/log/munge/munged.log)"; exit 1; }

# ---- slurm.conf ---------------------------------------------------------------------------
host=$(hostname -s)
# slurmd -C prints this machine's real layout; the node line must match it exactly, or
# slurmctld marks the node invalid.
node=$(slurmd -C | head -n 1 | sed -E "s/^NodeName=[^ ]+/NodeName=$host NodeAddr=127.0.0.1/")
cat > "$CONF.part" <<EOF
# Written by scripts/slurm-local-up.sh: a one-node cluster on localhost.
ClusterName=aiqlocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MaxArraySize=${SLURM_MAX_ARRAY_SIZE:-1001}
$node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv -f "$CONF.part" "$CONF"

# ---- the daemons ----------------------------------------------------------------------------
if ! running slurmctld; then
  # -c: start clean, forgetting jobs of an earlier bring-up.
  slurmctld -c
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping >/dev/null 2>&1 || { log "slurmctld did not answer; see /var/log/slurm/slurmctld.log"; exit 1; }
if ! running slurmd; then
  slurmd
fi

for _ in $(seq 150); do
  st=$(sinfo -h -N -n "$host" -o %t 2>/dev/null || true)
  case "$st" in
    idle|mix|alloc) log "node $host is $st"; exit 0 ;;
    drain*|down*|inval*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
log "node $host did not become idle (state '${st:-?}'); see /var/log/slurm/slurmd.log"
sinfo -N -l >&2 || true
exit 1
