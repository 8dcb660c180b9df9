// How the ranks of a run meet: the store they share (torchrun's agent store, or one rank 0 serves)
// and the checks that they are the ranks the launcher announced, running the same recipe.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "dist/store.h"
#include "dist/topology.h"

namespace ftune::dist {

// The run's store. With t.agent_store: a client of the launcher's store at master_addr:master_port,
// every key under t.store_prefix. Otherwise rank 0 serves a c10d store on master_port (for as long
// as the returned store lives) and every rank, rank 0 included, is its client. Then every rank
// waits for all of them: fewer than WORLD_SIZE within `timeout` fails naming how many arrived
// ("2 of 4 ranks arrived within 30 s (WORLD_SIZE says 4)"), as do more ranks than WORLD_SIZE, two
// processes with one RANK, or ranks that disagree on WORLD_SIZE.
std::unique_ptr<Store> connect_store(const Topology& t, std::chrono::milliseconds timeout);

// Every rank publishes plan_hash; a rank whose hash differs from rank 0's fails naming both ("rank
// 1's recipe differs from rank 0's (run plan hash ... vs ...)"), and so do all the others (rank 0
// compares every rank's and tells them).
void check_same_plan(Store& store, int rank, int world, const std::string& plan_hash);

}  // namespace ftune::dist
