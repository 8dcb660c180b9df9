// Routes every method and path to Api::handle; the listener's own errors (a body over the limit,
// an unreadable request) get the same JSON error shape.
#include "infer/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include "core/error.h"

namespace ftune {

namespace {

// Far above any prompt a model's context holds, below what would strain the host.
constexpr size_t kMaxBody = 64u << 20;
// Request threads: each waits on the engine while its sequences run, so more than the cores,
// letting that many requests join one batch.
constexpr size_t kThreads = 64;

void send(httplib::Response& res, const Api::Reply& r) {
  res.status = r.status;
  res.set_content(r.body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

}  // namespace

Server::Server(Api& api) : http_(std::make_unique<httplib::Server>()) {
  http_->new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  http_->set_payload_max_length(kMaxBody);
  // SO_REUSEADDR alone: a restart may take the port back from TIME_WAIT at once, but a second
  // server on a port in use fails, where httplib's default (SO_REUSEPORT too) would share it.
  http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  auto route = [&api](const httplib::Request& req, httplib::Response& res) {
    send(res, api.handle(req.method, req.path, req.body));
  };
  const std::string any = R"(/.*)";
  http_->Get(any, route);
  http_->Post(any, route);
  http_->Put(any, route);
  http_->Delete(any, route);
  http_->Patch(any, route);
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a reply of the Api's own
    const int status = res.status;
    nlohmann::json body = {
        {"error",
         {{"message", status == 413 ? "the request body is too large" : "the request could not be read"},
          {"type", "invalid_request_error"},
          {"param", nullptr},
          {"code", nullptr}}}};
    send(res, {status, body});
  });
  http_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send(res, {500,
               {{"error",
                 {{"message", "internal error"}, {"type", "server_error"}, {"param", nullptr}, {"code", nullptr}}}}});
  });
}

Server::~Server() = default;

int Server::bind(const std::string& host, int port) {
  if (port < 0 || port > 65535) fail("--port must be in [0, 65535], got {}", port);
  if (port == 0) {
    const int p = http_->bind_to_any_port(host);
    if (p <= 0) fail("cannot listen on {} (any port): the address is not one of this host's", host);
    return p;
  }
  if (!http_->bind_to_port(host, port))
    fail("cannot listen on {}:{}: the port is in use or the address is not one of this host's", host, port);
  return port;
}

void Server::listen() { http_->listen_after_bind(); }

void Server::stop() { http_->stop(); }

}  // namespace ftune
