// A throwaway PostgreSQL server for tests: initdb and pg_ctl of Debian's postgresql-15 in a
// temporary directory, as an unprivileged user (nobody when the tests run as root: the server
// refuses root), listening on a random port of 127.0.0.1, trust authentication. Stopped and
// removed when the object goes.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace rankscope::test {

class PgTestServer {
 public:
  // A running server, or null with the reason in `why` (no PostgreSQL binaries, or the server
  // did not start: the reason then names its log).
  static std::unique_ptr<PgTestServer> start(std::string* why) {
    const auto bin = find_bin();
    if (bin.empty()) {
      *why = "PostgreSQL server binaries (initdb, pg_ctl of postgresql-15) not installed";
      return nullptr;
    }
    std::unique_ptr<PgTestServer> s(new PgTestServer());
    s->bin_ = bin;
    char tmpl[] = "/tmp/rankscope-pg-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      *why = "cannot create a temporary directory";
      return nullptr;
    }
    s->dir_ = tmpl;
    s->as_nobody_ = ::geteuid() == 0;
    if (s->as_nobody_ && ::chown(tmpl, 65534, 65534) != 0) {
      *why = "cannot hand the temporary directory to nobody";
      return nullptr;
    }
    if (s->run({(bin / "initdb").string(), "-D", (s->dir_ / "data").string(), "-U", "rankscope", "-A", "trust", "-E",
                "UTF8", "--no-sync"}) != 0) {
      *why = "initdb failed; see " + (s->dir_ / "server.log").string();
      s->keep_ = true;
      return nullptr;
    }
    for (int attempt = 0; attempt < 5; ++attempt) {
      s->port_ = free_port();
      if (s->start_server()) return s;
    }
    *why = "pg_ctl start failed; see " + (s->dir_ / "server.log").string();
    s->keep_ = true;
    return nullptr;
  }

  ~PgTestServer() {
    stop();
    if (!keep_ && !dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  // postgresql://rankscope@127.0.0.1:PORT/DB
  std::string url(const std::string& db = "postgres") const {
    return "postgresql://rankscope@127.0.0.1:" + std::to_string(port_) + "/" + db;
  }
  int port() const { return port_; }

  // Stops the server at once (as a crash or a machine going away would); start_again() brings it
  // back on the same port and data.
  void stop() {
    if (!running_) return;
    run({(bin_ / "pg_ctl").string(), "-D", (dir_ / "data").string(), "-m", "immediate", "-w", "stop"});
    running_ = false;
  }
  bool start_again() { return start_server(); }

  // Runs psql-free SQL administration through createdb.
  bool create_database(const std::string& name) {
    return run({(bin_ / "createdb").string(), "-h", "127.0.0.1", "-p", std::to_string(port_), "-U", "rankscope", name}) == 0;
  }

 private:
  PgTestServer() = default;

  static std::filesystem::path find_bin() {
    std::error_code ec;
    for (const char* version : {"17", "16", "15", "14", "13"}) {
      const std::filesystem::path bin = std::filesystem::path("/usr/lib/postgresql") / version / "bin";
      if (std::filesystem::exists(bin / "initdb", ec) && std::filesystem::exists(bin / "pg_ctl", ec)) return bin;
    }
    return {};
  }

  static int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    int port = 0;
    socklen_t len = sizeof addr;
    if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    if (fd >= 0) ::close(fd);
    return port;
  }

  bool start_server() {
    const std::string options = "-p " + std::to_string(port_) + " -k " + dir_.string() +
                                " -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100";
    running_ = run({(bin_ / "pg_ctl").string(), "-D", (dir_ / "data").string(), "-l", (dir_ / "server.log").string(), "-w",
                    "-t", "60", "-o", options, "start"}) == 0;
    return running_;
  }

  // Runs a PostgreSQL binary (as nobody when root), its output appended to server.log.
  int run(const std::vector<std::string>& args) const {
    std::fflush(nullptr);  // nothing buffered here is written twice by the child
    const pid_t pid = ::fork();
    if (pid < 0) return -1;
    if (pid == 0) {
      const std::string log = (dir_ / "commands.log").string();
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      if (as_nobody_) {
        if (fd >= 0) (void)::fchown(fd, 65534, 65534);
        if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(126);
      }
      if (::chdir(dir_.c_str()) != 0) ::_exit(126);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::filesystem::path bin_, dir_;
  int port_ = 0;
  bool as_nobody_ = false, running_ = false, keep_ = false;
};

}  // namespace rankscope::test

// In a Catch2 test: a running throwaway server named `server`, or the test returns, reported
// skipped with the reason.
#define RS_REQUIRE_PG(server)                                 \
  std::string why_;                                            \
  auto server = ::rankscope::test::PgTestServer::start(&why_); \
  if (!server) {                                               \
    WARN("SKIPPED: " << why_);                                 \
    return;                                                    \
  }
