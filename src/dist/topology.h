// Where this process sits in a run: its rank, the world size, the ranks of its node, and how the
// ranks meet, as the launcher that started it says in the environment:
//   torchrun (also Flyte's Elastic task): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//     MASTER_ADDR, MASTER_PORT; TORCHELASTIC_USE_AGENT_STORE=True means the agent serves the store
//     there, with the run's keys under /worker/attempt_<TORCHELASTIC_RESTART_COUNT>;
//   Kubeflow's PyTorchJob: the same names, or PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK (whose
//     RANK is the pod index, not the process's);
//   Slurm (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE, and the first host
//     of SLURM_NODELIST / SLURM_JOB_NODELIST as the master when MASTER_ADDR is not set;
//   ftune train --nproc-per-node N: the torchrun names, set by ftune itself.
// None of them: one rank.
#pragma once
#include <map>
#include <string>

namespace ftune::dist {

struct Topology {
  int rank = 0, world = 1;            // global
  int local_rank = 0, local_world = 1;  // within this node
  int node_rank = 0, nodes = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;   // the launcher's agent serves the store at master_addr:master_port
  std::string store_prefix;   // key prefix of the run in that store ("" when we serve our own)
  std::string launcher = "none";  // torchrun, kubeflow, slurm, ftune or none
};

// From an environment (name -> value); fails with one line naming the variable when one is
// malformed or they contradict each other (e.g. RANK >= WORLD_SIZE).
Topology topology_from_env(const std::map<std::string, std::string>& env);
// From this process's environment.
Topology topology_from_env();

}  // namespace ftune::dist
