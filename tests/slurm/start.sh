#!/usr/bin/env bash
# Start a single-node SLURM cluster with accounting (slurmctld, slurmd, slurmdbd + MariaDB, munge) on
# this machine, for the test suite. Run as root. Idempotent: installs the Debian packages only when
# missing, starts only the daemons that are not running, and writes the names of the daemons it
# started to $CK_SLURM_STATE (default /run/ck-test-slurm/started) so stop.sh stops exactly those.
#
# Works without systemd (containers, CI). Tuned for tests: fast scheduling, short kill wait.
set -euo pipefail

STATE_DIR=${CK_SLURM_STATE_DIR:-/run/ck-test-slurm}
STARTED="$STATE_DIR/started"
mkdir -p "$STATE_DIR"
touch "$STARTED"
log() { echo "[slurm-start] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root"; exit 3
fi

export DEBIAN_FRONTEND=noninteractive
need=""
for cmd in slurmctld slurmd slurmdbd munged mariadbd; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need=1
done
if [ -n "$need" ]; then
  command -v apt-get >/dev/null || { log "apt-get is not available"; exit 4; }
  log "installing slurm-wlm munge slurmdbd mariadb-server"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    slurm-wlm slurmdbd munge mariadb-server mariadb-client >/dev/null
  installed=1
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 ))

started() { grep -qx "$1" "$STARTED" || echo "$1" >> "$STARTED"; }
running() { pgrep -x "$1" >/dev/null 2>&1; }
# daemons that package scripts started while we installed them are ours to stop too
if [ -n "${installed:-}" ]; then
  for d in munged slurmdbd slurmctld slurmd; do running "$d" && started "$d"; done
  running mariadbd && started mariadb
fi

# ---------------------------------------------------------------- munge
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null 2>&1 || true; fi
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
if ! running munged; then
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
  started munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null

# ---------------------------------------------------------------- MariaDB for slurmdbd
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  if [ ! -d /var/lib/mysql/mysql ]; then
    "$(command -v mariadb-install-db || command -v mysql_install_db)" --user=mysql --datadir=/var/lib/mysql \
      >/dev/null 2>&1
  fi
  SAFE=$(command -v mariadbd-safe || command -v mysqld_safe)
  (cd / && setsid "$SAFE" --datadir=/var/lib/mysql </dev/null >/dev/null 2>&1 &) </dev/null >/dev/null 2>&1
  started mariadb
  for _ in $(seq 150); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
mysqladmin ping >/dev/null
DBPASS_FILE="$STATE_DIR/dbpass"
[ -s "$DBPASS_FILE" ] || (head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$DBPASS_FILE")
DBPASS=$(cat "$DBPASS_FILE")
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost'; ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# ---------------------------------------------------------------- configuration
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$HOST
AuthType=auth/munge
# a requeued job waits cred_expire (default 120 s) before it starts again; short for tests
AuthInfo=cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=30
JobRequeue=1
MaxArraySize=10001
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# ---------------------------------------------------------------- daemons
if ! running slurmdbd; then
  /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1
  started slurmdbd
fi
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
sacctmgr -n -P list cluster format=cluster | grep -qx local || sacctmgr -i add cluster local >/dev/null
if ! running slurmctld; then
  /usr/sbin/slurmctld </dev/null >/dev/null 2>&1
  started slurmctld
fi
if ! running slurmd; then
  /usr/sbin/slurmd </dev/null >/dev/null 2>&1
  started slurmd
fi
for _ in $(seq 100); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 0.2
done
sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)' || {
  log "node did not come up"; sinfo >&2 || true; tail -20 /var/log/slurm/slurmctld.log >&2 || true; exit 5; }
for _ in $(seq 100); do sacct -n -X -S now-1minutes >/dev/null 2>&1 && break; sleep 0.1; done
log "up: $(sinfo -h -o '%P %a %D %T %c cpus %m MB')"
