// Where a process sits in a run, from each launcher's variables: torchrun (and its agent store),
// ftune's own launcher, Kubeflow's PyTorchJob (pod per rank, PET_ names), Slurm (host lists,
// tasks-per-node lists); and every malformed or contradictory value named in one line.
#include <gtest/gtest.h>

#include "error_util.h"

#include <cstdlib>
#include <optional>

#include "core/error.h"
#include "dist/topology.h"

namespace ftune::dist {
namespace {

using Env = std::map<std::string, std::string>;

using testing::expect_error;

void expect_env_error(const Env& env, const std::string& substr) {
  expect_error([&] { topology_from_env(env); }, substr);
}

Env with(Env base, const Env& more) {
  for (const auto& [k, v] : more) base[k] = v;
  return base;
}

TEST(Topology, NoLauncherIsOneRank) {
  const Topology t = topology_from_env(Env{{"PATH", "/usr/bin"}, {"HOME", "/root"}});
  EXPECT_EQ(t.rank, 0);
  EXPECT_EQ(t.world, 1);
  EXPECT_EQ(t.local_world, 1);
  EXPECT_EQ(t.nodes, 1);
  EXPECT_EQ(t.launcher, "none");
  EXPECT_FALSE(t.agent_store);
  EXPECT_EQ(t.master_port, 29500);
}

// What torchrun 2.x gives worker 5 of 2 nodes x 4 with the c10d rendezvous.
const Env kTorchrun = {{"RANK", "5"},
                       {"WORLD_SIZE", "8"},
                       {"LOCAL_RANK", "1"},
                       {"LOCAL_WORLD_SIZE", "4"},
                       {"GROUP_RANK", "1"},
                       {"GROUP_WORLD_SIZE", "2"},
                       {"ROLE_RANK", "5"},
                       {"ROLE_WORLD_SIZE", "8"},
                       {"MASTER_ADDR", "10.0.0.1"},
                       {"MASTER_PORT", "29400"},
                       {"TORCHELASTIC_RUN_ID", "job7"},
                       {"TORCHELASTIC_RESTART_COUNT", "2"},
                       {"TORCHELASTIC_MAX_RESTARTS", "3"},
                       {"TORCHELASTIC_USE_AGENT_STORE", "True"}};

TEST(Topology, TorchrunWithItsAgentStore) {
  const Topology t = topology_from_env(kTorchrun);
  EXPECT_EQ(t.rank, 5);
  EXPECT_EQ(t.world, 8);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.local_world, 4);
  EXPECT_EQ(t.node_rank, 1);
  EXPECT_EQ(t.nodes, 2);
  EXPECT_EQ(t.master_addr, "10.0.0.1");
  EXPECT_EQ(t.master_port, 29400);
  EXPECT_TRUE(t.agent_store);
  EXPECT_EQ(t.store_prefix, "/worker/attempt_2");
  EXPECT_EQ(t.launcher, "torchrun");
}

TEST(Topology, TorchrunWithoutTheAgentStore) {
  const Topology t = topology_from_env(with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "False"}}));
  EXPECT_FALSE(t.agent_store);
  EXPECT_EQ(t.store_prefix, "");
  EXPECT_EQ(t.launcher, "torchrun");
  Env no_flag = kTorchrun;
  no_flag.erase("TORCHELASTIC_USE_AGENT_STORE");
  EXPECT_FALSE(topology_from_env(no_flag).agent_store);
}

TEST(Topology, TorchrunNodesOfDifferentSizesNeedGroupWorldSize) {
  // node 0 runs 4 ranks, node 1 runs 3: WORLD_SIZE 7, LOCAL_WORLD_SIZE 3 on node 1
  Env e = {{"RANK", "5"}, {"WORLD_SIZE", "7"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "3"},
           {"GROUP_RANK", "1"}, {"GROUP_WORLD_SIZE", "2"}, {"MASTER_ADDR", "n0"}, {"TORCHELASTIC_RUN_ID", "x"}};
  const Topology t = topology_from_env(e);
  EXPECT_EQ(t.nodes, 2);
  EXPECT_EQ(t.node_rank, 1);
  e.erase("GROUP_WORLD_SIZE");
  expect_env_error(e, "WORLD_SIZE=7 is not a multiple of LOCAL_WORLD_SIZE=3 (and GROUP_WORLD_SIZE is not set)");
}

TEST(Topology, FtunesOwnLauncher) {
  const Topology t = topology_from_env(Env{{"RANK", "1"}, {"LOCAL_RANK", "1"}, {"WORLD_SIZE", "3"},
                                           {"LOCAL_WORLD_SIZE", "3"}, {"GROUP_RANK", "0"},
                                           {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "41234"},
                                           {"FTUNE_LAUNCHER", "ftune"}});
  EXPECT_EQ(t.launcher, "ftune");
  EXPECT_EQ(t.rank, 1);
  EXPECT_EQ(t.world, 3);
  EXPECT_EQ(t.local_world, 3);
  EXPECT_EQ(t.nodes, 1);
  EXPECT_EQ(t.master_port, 41234);
  EXPECT_FALSE(t.agent_store);
}

TEST(Topology, PlainTorchNamesOnOneNodeDefaultTheMaster) {
  const Topology t = topology_from_env(Env{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"},
                                           {"LOCAL_WORLD_SIZE", "2"}});
  EXPECT_EQ(t.master_addr, "127.0.0.1");
  EXPECT_EQ(t.master_port, 29500);
  EXPECT_EQ(t.nodes, 1);
  EXPECT_EQ(t.launcher, "torchrun");
}

TEST(Topology, KubeflowPodPerRank) {
  // A PyTorchJob without nprocPerNode: RANK is the pod's index, one rank per pod
  const Topology t = topology_from_env(Env{{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"MASTER_ADDR", "job-master-0"},
                                           {"MASTER_PORT", "23456"}, {"KUBERNETES_SERVICE_HOST", "10.96.0.1"}});
  EXPECT_EQ(t.launcher, "kubeflow");
  EXPECT_EQ(t.rank, 2);
  EXPECT_EQ(t.world, 4);
  EXPECT_EQ(t.nodes, 4);
  EXPECT_EQ(t.node_rank, 2);
  EXPECT_EQ(t.local_rank, 0);
  EXPECT_EQ(t.local_world, 1);
  EXPECT_EQ(t.master_addr, "job-master-0");
}

const Env kPet = {{"PET_NNODES", "3"},          {"PET_NPROC_PER_NODE", "1"},   {"PET_NODE_RANK", "2"},
                  {"PET_MASTER_ADDR", "pj-master-0"}, {"PET_MASTER_PORT", "23456"}, {"RANK", "2"},
                  {"WORLD_SIZE", "3"},          {"MASTER_ADDR", "pj-master-0"}, {"MASTER_PORT", "23456"}};

TEST(Topology, KubeflowPetVariables) {
  const Topology t = topology_from_env(kPet);
  EXPECT_EQ(t.launcher, "kubeflow");
  EXPECT_EQ(t.rank, 2);
  EXPECT_EQ(t.world, 3);
  EXPECT_EQ(t.node_rank, 2);
  EXPECT_EQ(t.nodes, 3);
  EXPECT_EQ(t.local_world, 1);
  EXPECT_EQ(t.master_addr, "pj-master-0");
  EXPECT_EQ(t.master_port, 23456);
  // the node count may come as a min:max range with min = max
  EXPECT_EQ(topology_from_env(with(kPet, {{"PET_NNODES", "3:3"}})).nodes, 3);
  // only PET_ names, no RANK
  Env pet_only = kPet;
  for (const char* k : {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) pet_only.erase(k);
  const Topology p = topology_from_env(pet_only);
  EXPECT_EQ(p.rank, 2);
  EXPECT_EQ(p.master_addr, "pj-master-0");
}

TEST(Topology, KubeflowUnderTorchrunReadsTorchrunsNames) {
  // torchrun --no-python inside the pod: its workers inherit the PET_ names, and LOCAL_RANK says which
  const Env e = with(kPet, {{"PET_NPROC_PER_NODE", "4"}, {"RANK", "9"}, {"WORLD_SIZE", "12"}, {"LOCAL_RANK", "1"},
                            {"LOCAL_WORLD_SIZE", "4"}, {"GROUP_RANK", "2"}, {"TORCHELASTIC_RUN_ID", "pj"}});
  const Topology t = topology_from_env(e);
  EXPECT_EQ(t.launcher, "torchrun");
  EXPECT_EQ(t.rank, 9);
  EXPECT_EQ(t.world, 12);
  EXPECT_EQ(t.node_rank, 2);
}

TEST(Topology, KubeflowRefusals) {
  expect_env_error(with(kPet, {{"PET_NNODES", "1:4"}}), "PET_NNODES=1:4 is an elastic range");
  expect_env_error(with(kPet, {{"PET_NPROC_PER_NODE", "4"}}),
                   "PET_NPROC_PER_NODE=4 asks for 4 ranks per pod: start ftune under torchrun --no-python");
  expect_env_error(with(kPet, {{"PET_NPROC_PER_NODE", "auto"}}), "PET_NPROC_PER_NODE='auto' is not a whole number");
  expect_env_error(with(kPet, {{"RANK", "1"}}), "RANK=1 (the pod's index) contradicts PET_NODE_RANK=2");
  expect_env_error(with(kPet, {{"PET_NODE_RANK", "3"}, {"RANK", "3"}}), "PET_NODE_RANK=3 is not below PET_NNODES=3");
  expect_env_error(with(kPet, {{"WORLD_SIZE", "5"}}), "WORLD_SIZE=5 contradicts PET_NNODES=3");
  expect_env_error(Env{{"PET_NPROC_PER_NODE", "1"}}, "PET_NNODES is not set, but PET_NPROC_PER_NODE is");
  expect_env_error(Env{{"PET_NNODES", "2"}}, "PET_NODE_RANK is not set (nor RANK");
  expect_env_error(Env{{"PET_NNODES", "2"}, {"PET_NODE_RANK", "1"}}, "PET_MASTER_ADDR is not set (nor MASTER_ADDR)");
}

const Env kSlurm = {{"SLURM_PROCID", "5"},         {"SLURM_NTASKS", "8"},   {"SLURM_LOCALID", "1"},
                    {"SLURM_NTASKS_PER_NODE", "4"}, {"SLURM_NNODES", "2"},   {"SLURM_NODEID", "1"},
                    {"SLURM_NODELIST", "gpu[03-05,07]"}, {"SLURM_JOB_ID", "4242"}};

TEST(Topology, SlurmTasks) {
  const Topology t = topology_from_env(kSlurm);
  EXPECT_EQ(t.launcher, "slurm");
  EXPECT_EQ(t.rank, 5);
  EXPECT_EQ(t.world, 8);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.local_world, 4);
  EXPECT_EQ(t.node_rank, 1);
  EXPECT_EQ(t.nodes, 2);
  EXPECT_EQ(t.master_addr, "gpu03");
  EXPECT_EQ(t.master_port, 29500);
  EXPECT_FALSE(t.agent_store);
  // MASTER_ADDR / MASTER_PORT win over the host list
  const Topology m = topology_from_env(with(kSlurm, {{"MASTER_ADDR", "login1"}, {"MASTER_PORT", "31000"}}));
  EXPECT_EQ(m.master_addr, "login1");
  EXPECT_EQ(m.master_port, 31000);
  // the job's list when the step's is not there
  Env job = kSlurm;
  job.erase("SLURM_NODELIST");
  job["SLURM_JOB_NODELIST"] = "cn[100-101]";
  EXPECT_EQ(topology_from_env(job).master_addr, "cn100");
}

TEST(Topology, SlurmTasksPerNodeLists) {
  Env e = kSlurm;
  e.erase("SLURM_NTASKS_PER_NODE");
  e["SLURM_NTASKS"] = "8";
  e["SLURM_NNODES"] = "3";
  e["SLURM_TASKS_PER_NODE"] = "3(x2),2";
  e["SLURM_NODEID"] = "2";
  e["SLURM_PROCID"] = "7";
  e["SLURM_LOCALID"] = "1";
  EXPECT_EQ(topology_from_env(e).local_world, 2);
  e["SLURM_NODEID"] = "1";
  e["SLURM_PROCID"] = "4";
  EXPECT_EQ(topology_from_env(e).local_world, 3);
  // the step's own list comes first
  e["SLURM_STEP_TASKS_PER_NODE"] = "2(x3)";
  EXPECT_EQ(topology_from_env(e).local_world, 2);
  e.erase("SLURM_STEP_TASKS_PER_NODE");
  e["SLURM_TASKS_PER_NODE"] = "3(x";
  expect_env_error(e, "SLURM_TASKS_PER_NODE='3(x' is not a Slurm tasks-per-node list");
  e["SLURM_TASKS_PER_NODE"] = "4";
  expect_env_error(e, "SLURM_TASKS_PER_NODE='4' lists 1 nodes, too few for SLURM_NODEID=1");
  // one node, no per-node count: every task is on it
  const Topology one = topology_from_env(Env{{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "2"},
                                             {"SLURM_NNODES", "1"}, {"SLURM_NODEID", "0"}});
  EXPECT_EQ(one.local_world, 4);
  EXPECT_EQ(one.master_addr, "127.0.0.1");
}

std::string first_master(const std::string& list) {
  return topology_from_env(with(kSlurm, {{"SLURM_NODELIST", list}})).master_addr;
}

TEST(Topology, SlurmHostListForms) {
  EXPECT_EQ(first_master("node1"), "node1");
  EXPECT_EQ(first_master("node1,node2"), "node1");
  EXPECT_EQ(first_master("gpu[03-05,07]"), "gpu03");
  EXPECT_EQ(first_master("gpu[07,03-05]"), "gpu07");
  EXPECT_EQ(first_master("gpu[3]"), "gpu3");
  EXPECT_EQ(first_master("gpu[03-05],cpu[1-2]"), "gpu03");
  EXPECT_EQ(first_master("rack[1-2]-n[01-04]"), "rack1-n01");
  EXPECT_EQ(first_master("a[009-011]-ib"), "a009-ib");
  EXPECT_EQ(first_master("host-1.cluster.example.com,host-2"), "host-1.cluster.example.com");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", "gpu[03-05"}}), "SLURM_NODELIST='gpu[03-05' is not a Slurm host list ('[' without ']')");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", "gpu03]"}}), "(']' without '[')");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", "gpu[a-b]"}}), "SLURM_NODELIST='gpu[a-b]' is not a Slurm host list");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", "gpu[05-03]"}}), "(a range runs backwards)");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", "gpu[]"}}), "SLURM_NODELIST='gpu[]'");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", ",gpu1"}}), "(no host before the first ',')");
  expect_env_error(with(kSlurm, {{"SLURM_NODELIST", "gpu[1-[2]]"}}), "SLURM_NODELIST='gpu[1-[2]]'");
}

TEST(Topology, SlurmRefusals) {
  expect_env_error(Env{{"SLURM_PROCID", "0"}}, "SLURM_PROCID is set, but SLURM_NTASKS is not");
  expect_env_error(with(kSlurm, {{"SLURM_PROCID", "8"}}), "SLURM_PROCID=8 is not below SLURM_NTASKS=8");
  expect_env_error(with(kSlurm, {{"SLURM_LOCALID", "4"}}), "SLURM_LOCALID=4 is not below SLURM_NTASKS_PER_NODE=4");
  expect_env_error(with(kSlurm, {{"SLURM_NODEID", "2"}}), "SLURM_NODEID=2 is not below SLURM_NNODES=2");
  expect_env_error(with(kSlurm, {{"SLURM_NTASKS", "x8"}}), "SLURM_NTASKS='x8' is not a whole number");
  Env no_node = kSlurm;
  no_node.erase("SLURM_NODEID");
  expect_env_error(no_node, "SLURM_NNODES=2, but SLURM_NODEID is not set");
  Env no_list = kSlurm;
  no_list.erase("SLURM_NODELIST");
  expect_env_error(no_list, "SLURM_NNODES=2, but neither MASTER_ADDR nor SLURM_NODELIST is set");
  Env no_per_node = kSlurm;
  no_per_node.erase("SLURM_NTASKS_PER_NODE");
  expect_env_error(no_per_node, "SLURM_NTASKS=8 spans 2 nodes, but SLURM_NTASKS_PER_NODE is not set");
}

TEST(Topology, TorchNamesRefusals) {
  expect_env_error(Env{{"RANK", "abc"}, {"WORLD_SIZE", "2"}}, "RANK='abc' is not a whole number");
  expect_env_error(Env{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "RANK='-1' is not a whole number");
  expect_env_error(Env{{"RANK", "1 "}, {"WORLD_SIZE", "2"}}, "RANK='1 ' is not a whole number");
  expect_env_error(Env{{"RANK", "4"}, {"WORLD_SIZE", "4"}}, "RANK=4 is not below WORLD_SIZE=4");
  expect_env_error(Env{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 is out of range (1..");
  expect_env_error(Env{{"RANK", "0"}, {"WORLD_SIZE", "99999999999"}}, "WORLD_SIZE='99999999999' is not a whole number");
  expect_env_error(Env{{"RANK", "0"}}, "WORLD_SIZE is not set, but RANK is");
  expect_env_error(Env{{"WORLD_SIZE", "2"}}, "RANK is not set, but WORLD_SIZE is");
  expect_env_error(Env{{"LOCAL_RANK", "0"}}, "RANK is not set, but LOCAL_RANK is");
  expect_env_error(with(kTorchrun, {{"MASTER_PORT", "70000"}}), "MASTER_PORT=70000 is out of range (1..65535)");
  expect_env_error(with(kTorchrun, {{"MASTER_PORT", "0"}}), "MASTER_PORT=0 is out of range (1..65535)");
  expect_env_error(with(kTorchrun, {{"MASTER_PORT", "29500x"}}), "MASTER_PORT='29500x' is not a whole number");
  expect_env_error(with(kTorchrun, {{"LOCAL_RANK", "4"}}), "LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4");
  expect_env_error(Env{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}},
                   "LOCAL_RANK=0 is set, but LOCAL_WORLD_SIZE is not");
  expect_env_error(with(kTorchrun, {{"LOCAL_WORLD_SIZE", "16"}}), "LOCAL_WORLD_SIZE=16 exceeds WORLD_SIZE=8");
  expect_env_error(with(kTorchrun, {{"GROUP_RANK", "2"}}), "GROUP_RANK=2 is not below the node count 2");
  expect_env_error(with(kTorchrun, {{"RANK", "6"}}),
                   "RANK=6 contradicts GROUP_RANK=1, LOCAL_RANK=1 and LOCAL_WORLD_SIZE=4 (which make rank 5)");
  Env no_master = kTorchrun;
  no_master.erase("MASTER_ADDR");
  no_master["TORCHELASTIC_USE_AGENT_STORE"] = "False";
  expect_env_error(no_master, "MASTER_ADDR is not set, but WORLD_SIZE=8 spans 2 nodes");
  expect_env_error(with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "yes"}}),
                   "TORCHELASTIC_USE_AGENT_STORE='yes' is neither True nor False");
  Env no_count = kTorchrun;
  no_count.erase("TORCHELASTIC_RESTART_COUNT");
  expect_env_error(no_count, "TORCHELASTIC_USE_AGENT_STORE=True, but TORCHELASTIC_RESTART_COUNT is not set");
  expect_env_error(with(kTorchrun, {{"TORCHELASTIC_RESTART_COUNT", "one"}}),
                   "TORCHELASTIC_RESTART_COUNT='one' is not a whole number");
  expect_env_error(with(kTorchrun, {{"FTUNE_LAUNCHER", "mpirun"}}), "FTUNE_LAUNCHER='mpirun' is not ftune");
}

TEST(Topology, EmptyVariablesCountAsUnset) {
  const Topology t = topology_from_env(Env{{"RANK", ""}, {"WORLD_SIZE", ""}, {"SLURM_PROCID", ""}});
  EXPECT_EQ(t.launcher, "none");
  EXPECT_EQ(t.world, 1);
}

// The process's own environment, set and restored around the call.
class ScopedEnv {
 public:
  ScopedEnv(const std::string& name, const std::string& value) : name_(name) {
    if (const char* v = std::getenv(name.c_str())) old_ = v;
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

TEST(Topology, ReadsThisProcesssEnvironment) {
  ScopedEnv a("RANK", "3"), b("WORLD_SIZE", "4"), c("LOCAL_RANK", "3"), d("LOCAL_WORLD_SIZE", "4"),
      e("FTUNE_LAUNCHER", "ftune"), f("MASTER_PORT", "40001"), g("GROUP_RANK", "0");
  const Topology t = topology_from_env();
  EXPECT_EQ(t.rank, 3);
  EXPECT_EQ(t.world, 4);
  EXPECT_EQ(t.launcher, "ftune");
  EXPECT_EQ(t.master_port, 40001);
}

}  // namespace
}  // namespace ftune::dist
