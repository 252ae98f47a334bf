// A throwaway single-node Slurm for tests: munged, slurmctld and slurmd of Debian's slurm-wlm
// packages, with their configuration, keys, state and logs in a temporary directory and random
// ports, so that nothing of the machine's own Slurm (if any) is touched. Root only (slurmd runs
// the jobs as their users); stopped and removed when the object goes.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "tests/pg_server.hpp"

namespace rankscope::test {

class SlurmTestCluster {
 public:
  static std::unique_ptr<SlurmTestCluster> start(std::string* why) {
    for (const char* bin : {"/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch"}) {
      if (!std::filesystem::exists(bin)) {
        *why = std::string("Slurm not installed (") + bin + " missing; Debian: slurmctld slurmd munge)";
        return nullptr;
      }
    }
    if (::geteuid() != 0) {
      *why = "a private Slurm needs root (slurmd starts jobs as their users)";
      return nullptr;
    }
    std::unique_ptr<SlurmTestCluster> c(new SlurmTestCluster());
    char tmpl[] = "/tmp/rankscope-slurm-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      *why = "cannot create a temporary directory";
      return nullptr;
    }
    c->dir_ = tmpl;
    const auto d = c->dir_.string();
    std::filesystem::create_directories(c->dir_ / "state");
    std::filesystem::create_directories(c->dir_ / "spool");
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::string node = host;
    node = node.substr(0, node.find('.'));
    {
      std::ofstream key(c->dir_ / "munge.key", std::ios::binary);
      std::ifstream random("/dev/urandom", std::ios::binary);
      char bytes[1024];
      random.read(bytes, sizeof bytes);
      key.write(bytes, sizeof bytes);
    }
    std::filesystem::permissions(c->dir_ / "munge.key", std::filesystem::perms::owner_read);
    const int ctld_port = free_tcp_port(), slurmd_port = free_tcp_port();
    std::ofstream(c->dir_ / "slurm.conf")
        << "ClusterName=rankscope-test\nSlurmctldHost=" << node << "\nSlurmUser=root\nSlurmdUser=root\n"
        << "SlurmctldPort=" << ctld_port << "\nSlurmdPort=" << slurmd_port << "\n"
        << "AuthType=auth/munge\nAuthInfo=socket=" << d << "/munge.sock\nCredType=cred/munge\n"
        << "StateSaveLocation=" << d << "/state\nSlurmdSpoolDir=" << d << "/spool\n"
        << "SlurmctldPidFile=" << d << "/slurmctld.pid\nSlurmdPidFile=" << d << "/slurmd.pid\n"
        << "SlurmctldLogFile=" << d << "/slurmctld.log\nSlurmdLogFile=" << d << "/slurmd.log\n"
        << "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nReturnToService=2\n"
        << "SchedulerType=sched/builtin\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
        << "MpiDefault=none\nJobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
        << "NodeName=" << node << " CPUs=" << std::max(1u, std::thread::hardware_concurrency())
        << " RealMemory=1000 State=UNKNOWN\n"
        << "PartitionName=debug Nodes=" << node << " Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8\n";
    c->conf_ = (c->dir_ / "slurm.conf").string();
    const std::string munged = "/usr/sbin/munged --force --socket=" + d + "/munge.sock --key-file=" + d +
                               "/munge.key --pid-file=" + d + "/munged.pid --log-file=" + d + "/munged.log --seed-file=" + d +
                               "/munge.seed";
    if (std::system(munged.c_str()) != 0 || std::system(("/usr/sbin/slurmctld -f " + c->conf_).c_str()) != 0 ||
        std::system(("/usr/sbin/slurmd -f " + c->conf_).c_str()) != 0) {
      *why = "the private Slurm did not start; see " + d;
      c->keep_ = true;
      return nullptr;
    }
    // Ready when sinfo shows the node idle.
    for (int i = 0; i < 100; ++i) {
      if (c->run_capture("sinfo -h -o %t").find("idle") != std::string::npos) return c;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    *why = "the private Slurm's node never became idle; see " + d;
    c->keep_ = true;
    return nullptr;
  }

  ~SlurmTestCluster() {
    for (const char* pid_file : {"slurmd.pid", "slurmctld.pid", "munged.pid"}) {
      std::ifstream in(dir_ / pid_file);
      long pid = 0;
      if (in >> pid && pid > 0) ::kill(static_cast<pid_t>(pid), SIGTERM);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (!keep_ && !dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  // A Slurm client command (sbatch, squeue, ...) with this cluster's configuration; its output.
  std::string run_capture(const std::string& command) const {
    const std::string cmd = "SLURM_CONF='" + conf_ + "' " + command + " 2>&1";
    std::string out;
    if (FILE* pipe = ::popen(cmd.c_str(), "r")) {
      char buf[4096];
      size_t n;
      while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
      ::pclose(pipe);
    }
    return out;
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  SlurmTestCluster() = default;
  static int free_tcp_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    socklen_t len = sizeof addr;
    int port = 0;
    if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    if (fd >= 0) ::close(fd);
    return port;
  }
  std::filesystem::path dir_;
  std::string conf_;
  bool keep_ = false;
};

}  // namespace rankscope::test
