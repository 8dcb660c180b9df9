// The HTTP listener of `ftune serve` (cpp-httplib): every request goes to the Api, whose JSON
// reply is sent as it is; the listener itself answers only for requests it cannot read.
#pragma once
#include <memory>
#include <string>

#include "infer/api.h"

namespace httplib {
class Server;
}

namespace ftune {

class Server {
 public:
  explicit Server(Api& api);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Binds host:port (port 0: a free one) and returns the port. Throws ftune::Error naming both.
  int bind(const std::string& host, int port);
  // Serves until stop() (from another thread or a signal handler's thread).
  void listen();
  void stop();

 private:
  std::unique_ptr<httplib::Server> http_;
};

}  // namespace ftune
