"""The Vagrantfile: `vagrant validate` (Debian package `vagrant`) accepts it,
and its lab is the one README and issue 5 describe: client, firewall and
server on two private networks that meet only at the firewall, routes
through the firewall, ctbpf installed by deploy/install.sh and run by the
systemd unit on the firewall.

Plain `vagrant validate` needs a usable provider (VirtualBox, libvirt, ...)
even to read the file, and none can run here; `--ignore-provider` validates
everything but the provider blocks, offline, without a box. The structure is
read by evaluating the Vagrantfile with Ruby against a recording stand-in for
Vagrant's configuration object.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from deploy_contract import REPO, check_ok, need_tool, run_tool

VAGRANTFILE = REPO / "Vagrantfile"

#: Evaluates a Vagrantfile, recording every configuration call as JSON:
#: [{"path": [...calls that led here...], "call"/"set": name, "args", "kw"}].
RECORDER = r'''
require "json"
class Rec
  def initialize(log, path)
    @log, @path = log, path
  end
  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    if n.end_with?("=")
      @log << {"path" => @path, "set" => n.chomp("="), "value" => args[0]}
      return args[0]
    end
    @log << {"path" => @path, "call" => n, "args" => args, "kw" => kw}
    sub = Rec.new(@log, @path + [n] + args.map(&:to_s))
    blk.call(sub) if blk
    sub
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  def self.configure(version)
    log = []
    yield Rec.new(log, [])
    STDOUT.write(JSON.generate(log))
  end
end
load ARGV[0]
'''


def _env(tmp_path) -> dict:
    """Vagrant kept away from the network, the user's ~/.vagrant.d and the
    checkout (it would write .vagrant/ there)."""
    env = dict(os.environ)
    env.update(VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"), VAGRANT_NO_COLOR="1",
               VAGRANT_CWD=str(REPO))
    return env


def test_ruby_syntax():
    ruby = need_tool("ruby", "ruby")
    check_ok(run_tool([ruby, "-c", str(VAGRANTFILE)]))


def test_vagrant_validate(tmp_path):
    vagrant = need_tool("vagrant", "vagrant")
    dotdir_before = (REPO / ".vagrant").exists()
    proc = run_tool([vagrant, "validate", "--ignore-provider"], cwd=REPO, env=_env(tmp_path),
                    timeout=180)
    check_ok(proc)
    assert "validated successfully" in proc.stdout
    # nothing but the success lines: warnings (an address Vagrant dislikes,
    # a deprecated option) would show here
    noise = [line for line in proc.stdout.splitlines()
             if line.strip() and "Ignoring provider config" not in line
             and "validated successfully" not in line]
    assert not noise, proc.stdout
    assert (REPO / ".vagrant").exists() == dotdir_before, "vagrant wrote .vagrant/ in the checkout"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """{machine: {"hostname", "networks": [(ip, intnet)], "provisions": [kw],
    "primary"}} from the recorded configuration."""
    ruby = need_tool("ruby", "ruby")
    recorder = tmp_path_factory.mktemp("vagrant") / "recorder.rb"
    recorder.write_text(RECORDER)
    proc = subprocess.run([ruby, str(recorder), str(VAGRANTFILE)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    check_ok(proc)
    log = json.loads(proc.stdout)
    machines: dict[str, dict] = {}
    for e in log:
        if e.get("call") == "define" and e["path"] == ["vm"]:
            machines[e["args"][0]] = {"networks": [], "provisions": [], "hostname": None,
                                      "primary": e["kw"].get("primary", False)}
    common = {"provisions": [], "box": None}
    for e in log:
        path = e["path"]
        if path == ["vm"] and e.get("set") == "box":
            common["box"] = e["value"]
        if path == ["vm"] and e.get("call") == "provision":
            common["provisions"].append(e)
        if len(path) >= 4 and path[:2] == ["vm", "define"] and path[3] == "vm":
            m = machines[path[2]]
            if e.get("set") == "hostname":
                m["hostname"] = e["value"]
            elif e.get("call") == "network" and e["args"][0] == "private_network":
                m["networks"].append((e["kw"]["ip"], e["kw"].get("virtualbox__intnet")))
            elif e.get("call") == "provision" and len(path) == 4:
                m["provisions"].append({**e["kw"], "name": e["args"][0]})
    return {"machines": machines, "common": common}


def test_three_machines_firewall_in_the_middle(lab):
    machines = lab["machines"]
    assert set(machines) == {"client", "firewall", "server"}
    assert machines["firewall"]["primary"] is True
    for name, m in machines.items():
        assert m["hostname"] == name
    nets = {name: {intnet for _, intnet in m["networks"]} for name, m in machines.items()}
    assert len(nets["client"]) == 1 and len(nets["server"]) == 1
    assert not nets["client"] & nets["server"], "client and server must not share a network"
    assert nets["firewall"] == nets["client"] | nets["server"]
    assert lab["common"]["box"].startswith("debian/")


def test_routes_go_through_the_firewall(lab):
    machines = lab["machines"]
    fw_ips = {ip for ip, _ in machines["firewall"]["networks"]}
    for name, far in (("client", "server"), ("server", "client")):
        (my_ip, my_net), = machines[name]["networks"]
        (far_ip, _), = machines[far]["networks"]
        gateway = next(ip for ip, net in machines["firewall"]["networks"] if net == my_net)
        far_prefix = ".".join(far_ip.split(".")[:3]) + ".0/24"
        scripts = " ".join(p.get("inline", "") for p in machines[name]["provisions"])
        assert f"ip route replace {far_prefix} via {gateway}" in scripts, (name, scripts)
        assert gateway in fw_ips
        assert any(p.get("run") == "always" for p in machines[name]["provisions"]), \
            f"{name}: the route must come back after a reboot"


def test_firewall_installs_and_runs_ctbpf_as_a_service(lab):
    fw = lab["machines"]["firewall"]
    script = "\n".join(p.get("inline", "") for p in fw["provisions"])
    assert "bash /vagrant/deploy/install.sh" in script
    assert "/vagrant/deploy/ctbpf.service" in script and "/etc/systemd/system/ctbpf.service" \
        in script
    assert "/etc/default/ctbpf" in script and "CTBPF_ARGS=" in script
    assert "systemctl enable ctbpf" in script
    assert "ip_forward" in script
    # the interfaces it attaches to are found by the firewall's lab addresses
    args = [a for p in fw["provisions"] for a in p.get("args", [])]
    assert sorted(args) == sorted(ip for ip, _ in fw["networks"])


def test_provisioning_scripts_are_valid_shell(lab):
    for name, m in lab["machines"].items():
        for p in m["provisions"]:
            proc = subprocess.run(["bash", "-n", "-c", p["inline"]], capture_output=True,
                                  text=True)
            assert proc.returncode == 0, f"{name} provisioner {p['name']}: {proc.stderr}"
