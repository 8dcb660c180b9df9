// `ftune train --nproc-per-node N` without a launcher: N copies of this process on this node, each
// with the environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR=127.0.0.1, a free MASTER_PORT), rank 0 serving the store. A stop signal is passed on
// to every rank; when one rank fails, the others are stopped (SIGTERM, then SIGKILL after the
// grace period) so that none waits for it until its timeout.
#pragma once
#include <string>
#include <vector>

namespace ftune::dist {

// Runs `args` (args[0]: the program) as `nproc` ranks and returns the exit status to end with:
// 0 when every rank succeeded, else the first failure's (a rank killed by signal s: 128 + s).
int launch_local_ranks(int nproc, const std::vector<std::string>& args, double grace_s);

}  // namespace ftune::dist
