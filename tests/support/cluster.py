"""A throwaway PostgreSQL cluster with outbound_msg in shared_preload_libraries.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to the `postgres`
OS user; otherwise to the current user. Its superuser is always called `postgres`.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg

PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
#: A chroot the server's binaries run in (PostgreSQL 17 and 18, see .ci/pg-chroot), with the
#: host's /tmp bound at its /tmp; PG_CONFIG then reports its paths as the host sees them.
PG_CHROOT = os.environ.get("PG_CHROOT", "")

#: Short delivery timings for test clusters, so that failures, retries and expiry happen within
#: a test.
TEST_SETTINGS = {
    "outbound_msg.timeout": "'2s'",
    "outbound_msg.retry_min_interval": "'200ms'",
    "outbound_msg.retry_max_interval": "'1s'",
}


def _bindir():
    return subprocess.run([PG_CONFIG, "--bindir"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _server_owner():
    """The uid and gid of the OS user `postgres` the server runs as: the chroot's own when
    there is one (its packages may have given it another uid than the host's)."""
    if PG_CHROOT:
        with open(os.path.join(PG_CHROOT, "etc", "passwd")) as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == "postgres":
                    return int(fields[2]), int(fields[3])
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def tool_command(bindir, tool):
    """The command that runs PostgreSQL's client program `tool` (psql, pg_dump, pgbench...) of
    the binaries in `bindir`: inside the chroot when there is one."""
    if PG_CHROOT:
        return ["chroot", PG_CHROOT, os.path.join(bindir[len(PG_CHROOT):], tool)]
    return [os.path.join(bindir, tool)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """initdb (or, with `standby_of`, a base backup of a running primary that then replays
    it) + pg_ctl start on a free port; `stop()` removes everything."""

    def __init__(self, settings=None, standby_of=None):
        self.bindir = _bindir()
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="outbound_msg-")
        self.datadir = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "server.log")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            os.chown(self.root, *_server_owner())
        if standby_of is None:
            self._run("initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
                      "-D", self.datadir)
        else:
            self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(standby_of.port),
                      "-U", "postgres", "-D", self.datadir, "-R", "-X", "stream")
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "shared_preload_libraries": "'outbound_msg'",
            "fsync": "off",
        }
        conf.update(settings or {})
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "start")

    def tool(self, name):
        """The command running this cluster's client program `name`."""
        return tool_command(self.bindir, name)

    def _run(self, tool, *args):
        command = [os.path.join(self.bindir, tool), *args]
        if PG_CHROOT:
            command = ["chroot", PG_CHROOT, "runuser", "-u", "postgres", "--",
                       os.path.join(self.bindir[len(PG_CHROOT):], tool), *args]
        elif self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def connect(self, dbname="postgres", user="postgres", **kwargs):
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user,
                               dbname=dbname, autocommit=True, **kwargs)

    def stop_immediate(self):
        """Stops the server as a crash would (`pg_ctl stop -m immediate`), keeping its data."""
        self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")

    def start(self):
        """Starts the server again after `stop_immediate` (crash recovery runs first)."""
        self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "start")

    def log(self):
        with open(self.logfile) as f:
            return f.read()

    def stop(self):
        try:
            if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_for(predicate, timeout=30.0, what="condition"):
    """Polls `predicate` until it returns a truthy value, which is returned; fails after
    `timeout` seconds. Never a fixed sleep: the poll interval is short and the deadline long."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def worker_state(db):
    """What this database's outbound_msg worker shows in pg_stat_activity.query (idle,
    delivering, paused), or None when none runs."""
    row = db.execute("SELECT query FROM pg_stat_activity WHERE backend_type = "
                     "'outbound_msg worker' AND datname = current_database()").fetchone()
    return row and row[0]


def worker_pid(db):
    """The process id of this database's outbound_msg worker, or None when none runs."""
    row = db.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = "
                     "'outbound_msg worker' AND datname = current_database()").fetchone()
    return row and row[0]


def cpu_seconds(pid):
    """User + system CPU time a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
