"""Several "hosts" on one machine: network namespaces joined by a veth pair, an sshd in each, pdsh over ssh.

Measured recipe: ENGINE_NOTES.md, "Several hosts on one machine". The test subnet is made unreachable from the root
namespace first, so no test packet can leave through the default gateway; every address lives only inside the
namespaces. Names, subnet, keys and configs are private to one instance; `close()` removes everything it made (and
ends the processes left inside its namespaces) even after a failure half-way through `start()`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("ip", "unshare", "pdsh", "ssh", "ssh-keygen")
SSHD = "/usr/sbin/sshd"
IFNAME = "veth0"  # the same name inside every namespace, so one GLOO_SOCKET_IFNAME fits all hosts


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b)] + ([] if Path(SSHD).exists() else [SSHD])


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Host:
    name: str  # UTS hostname inside the namespace
    netns: str
    addr: str
    sshd: subprocess.Popen[bytes] | None = None


class NetnsHosts:
    def __init__(self, root: Path, count: int = 2) -> None:
        tag = f"lt{os.getpid() % 100000}"
        self.root = root
        self.subnet_octet = 20 + os.getpid() % 200
        self.subnet = f"10.77.{self.subnet_octet}.0/24"
        self.hosts = [Host(f"h{i}", f"{tag}h{i}", f"10.77.{self.subnet_octet}.{i}") for i in range(1, count + 1)]
        self.veth = (f"{tag}a", f"{tag}b")
        self.ssh_config = root / "ssh_config"
        self._made: list[tuple[str, ...]] = []  # undo commands, newest last
        self._cables: list[str] = []  # cable(): deleted with the namespaces

    @property
    def env(self) -> dict[str, str]:
        """What a launcher process needs to reach the hosts: pdsh over ssh with this instance's keys."""
        return {"PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": f"-F {self.ssh_config}"}

    def start(self) -> None:
        assert len(self.hosts) == 2, "one veth pair joins two namespaces"
        sh("ip", "route", "replace", "unreachable", self.subnet)
        self._made.append(("ip", "route", "del", "unreachable", self.subnet))
        for h in self.hosts:
            sh("ip", "netns", "add", h.netns)
            self._made.append(("ip", "netns", "del", h.netns))
            sh("ip", "-n", h.netns, "link", "set", "lo", "up")
        a, b = self.hosts
        sh("ip", "link", "add", self.veth[0], "netns", a.netns, "type", "veth", "peer", "name", self.veth[1],
           "netns", b.netns)
        for h, end in zip(self.hosts, self.veth):
            sh("ip", "-n", h.netns, "link", "set", end, "name", IFNAME)
            sh("ip", "-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", IFNAME)
            sh("ip", "-n", h.netns, "link", "set", IFNAME, "up")
        self._keys()
        for h in self.hosts:
            self._start_sshd(h)
        deadline = time.monotonic() + 60
        for h in self.hosts:
            while self.ssh(h, "true", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sshd on {h.addr} did not answer: see {self.root}/sshd-{h.name}.log")
                time.sleep(0.2)

    def _keys(self) -> None:
        for key in ("host_key", "client_key"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / key))
        shutil.copy(self.root / "client_key.pub", self.root / "authorized_keys")
        self.ssh_config.write_text(
            f"Host *\n  IdentityFile {self.root}/client_key\n  IdentitiesOnly yes\n  BatchMode yes\n"
            f"  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {self.root}/known_hosts\n  LogLevel ERROR\n"
            "  ConnectTimeout 10\n")

    def _write_sshd_config(self, h: Host, env: dict[str, str] | None = None) -> Path:
        cfg = self.root / f"sshd-{h.name}.conf"
        cfg.write_text(
            f"ListenAddress {h.addr}\nHostKey {self.root}/host_key\nAuthorizedKeysFile {self.root}/authorized_keys\n"
            f"PidFile {self.root}/sshd-{h.name}.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nUseDNS no\nMaxStartups 100\n"
            + "".join(f"SetEnv {k}={v}\n" for k, v in (env or {}).items()))
        return cfg

    def _start_sshd(self, h: Host) -> None:
        cfg = self._write_sshd_config(h)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"sshd-{h.name}.log", "wb")
        # `ip netns exec`, unshare and sh all exec: the Popen pid is sshd's own.
        h.sshd = subprocess.Popen(
            ["ip", "netns", "exec", h.netns, "unshare", "--uts", "sh", "-c", f"hostname {h.name} && exec {SSHD} -D -e "
             f"-f {cfg}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def set_env(self, h: Host, env: dict[str, str]) -> None:
        """The environment every ssh session on that host gets (sshd's SetEnv), as a host set up differently
        would have; {} restores the common one. sshd re-reads its config on SIGHUP."""
        assert h.sshd is not None
        self._write_sshd_config(h, env)
        h.sshd.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while self.ssh(h, "true", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sshd on {h.addr} did not come back after SIGHUP")
            time.sleep(0.2)

    def cable(self, name_a: str, name_b: str = "") -> None:
        """A second link between the two hosts, unaddressed and up (a plugged cable): a veth pair named name_a in the
        first namespace and name_b (default the same) in the second, as a GB10's ConnectX-7 interfaces are named."""
        a, b = self.hosts
        tmp = (f"{self.veth[0]}c{len(self._cables)}", f"{self.veth[1]}c{len(self._cables)}")
        self._cables.append(name_a)
        sh("ip", "link", "add", tmp[0], "netns", a.netns, "type", "veth", "peer", "name", tmp[1], "netns", b.netns)
        for h, end, name in ((a, tmp[0], name_a), (b, tmp[1], name_b or name_a)):
            sh("ip", "-n", h.netns, "link", "set", end, "name", name)
            sh("ip", "-n", h.netns, "link", "set", name, "up")

    def link(self, h: Host, up: bool) -> None:
        """Take a host's end of the link down (a host that is off or unplugged, as its peers see it) or up again."""
        sh("ip", "-n", h.netns, "link", "set", IFNAME, "up" if up else "down")

    def ssh(self, h: Host, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.hosts[0].netns, "ssh", "-F", str(self.ssh_config), h.addr, command,
                  check=check)

    def exec_argv(self, h: Host) -> list[str]:
        """Prefix that runs a command inside a host's namespace (the launcher runs in the first one)."""
        return ["ip", "netns", "exec", h.netns]

    def freeze(self, h: Host) -> None:
        """A hung host: its sshd accepts TCP connections (the kernel does) and never answers."""
        assert h.sshd is not None
        h.sshd.send_signal(signal.SIGSTOP)

    def processes_left(self) -> list[int]:
        """Pids inside the namespaces other than the sshd listeners: ranks or launchers still running."""
        listeners = {h.sshd.pid for h in self.hosts if h.sshd is not None}
        pids = [int(p) for h in self.hosts for p in sh("ip", "netns", "pids", h.netns, check=False).stdout.split()]
        return [p for p in pids if p not in listeners]

    def thaw(self, h: Host) -> None:
        assert h.sshd is not None
        h.sshd.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for h in self.hosts:
            if h.sshd is not None and h.sshd.poll() is None:
                h.sshd.send_signal(signal.SIGCONT)
                h.sshd.kill()
                h.sshd.wait(timeout=30)
            self._kill_inside(h.netns)
        for undo in reversed(self._made):
            sh(*undo, check=False)
        self._made.clear()

    @staticmethod
    def _kill_inside(netns: str) -> None:
        """Ranks started over ssh in our namespace, left behind by a failed test: ours, ended by pid."""
        out = sh("ip", "netns", "pids", netns, check=False).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
