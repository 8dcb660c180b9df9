// The communicator of a run of one rank: every collective leaves the data as it is (or copies this
// rank's part into place); point-to-point calls have no peer and fail.
#include <cstring>

#include "core/error.h"
#include "dist/communicator.h"

namespace ftune::dist {

namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum(double*, size_t) override {}
  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) override {
    check_counts("reduce_scatter", counts);
    if (counts[0] > 0 && in != out) std::memmove(out, in, counts[0] * sizeof(float));
  }
  void all_gather(const float* in, float* out, const std::vector<size_t>& counts) override {
    check_counts("all_gather", counts);
    if (counts[0] > 0 && in != out) std::memmove(out, in, counts[0] * sizeof(float));
  }
  void all_gather_bytes(const void* in, void* out, const std::vector<size_t>& bytes) override {
    check_counts("all_gather", bytes);
    if (bytes[0] > 0 && in != out) std::memmove(out, in, bytes[0]);
  }
  void broadcast(void*, size_t, int root) override {
    if (root != 0) fail("broadcast: root {} is not a rank of a run of 1 rank", root);
  }
  void send(const void*, size_t, int peer) override {
    fail("send: peer {} is not another rank of a run of 1 rank", peer);
  }
  void send_recv(const void*, size_t, void*, size_t, int peer) override {
    fail("send_recv: peer {} is not another rank of a run of 1 rank", peer);
  }
  void recv(void*, size_t, int peer) override {
    fail("recv: peer {} is not another rank of a run of 1 rank", peer);
  }
  void barrier() override {}

 private:
  static void check_counts(const char* op, const std::vector<size_t>& counts) {
    if (counts.size() != 1) fail("{}: {} counts given for a run of 1 rank", op, counts.size());
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

}  // namespace ftune::dist
