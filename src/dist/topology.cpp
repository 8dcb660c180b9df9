// The launchers' environment variables read into a Topology. Which launcher it was:
//   LOCAL_RANK set, or RANK / WORLD_SIZE without Kubeflow's PET_ variables: the torchrun names
//     (labelled ftune when FTUNE_LAUNCHER=ftune, torchrun when torchrun's TORCHELASTIC_* or GROUP_RANK
//     are there, kubeflow inside a Kubernetes pod);
//   PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK without LOCAL_RANK: the process a PyTorchJob pod
//     starts (one rank per pod; more per pod need torchrun --no-python, which reads the PET_ names);
//   SLURM_PROCID: a task of srun (tasks on this node from the step's list SLURM_STEP_TASKS_PER_NODE
//     such as "4(x2),2", else the count SLURM_NTASKS_PER_NODE, else the job's list
//     SLURM_TASKS_PER_NODE).
// Empty variables count as unset.
#include "dist/topology.h"

#include <fmt/format.h>

#include <cstdlib>
#include <optional>
#include <vector>

#include "core/error.h"

extern char** environ;

namespace ftune::dist {

namespace {

using Env = std::map<std::string, std::string>;

std::optional<std::string> var(const Env& env, const std::string& name) {
  auto it = env.find(name);
  if (it == env.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

bool has(const Env& env, const std::string& name) { return var(env, name).has_value(); }

// A decimal number of the whole text, within [lo, hi].
int to_int(const std::string& name, const std::string& v, int lo, int hi) {
  bool digits = !v.empty() && v.size() <= 10;
  for (char c : v) digits = digits && c >= '0' && c <= '9';
  if (!digits) fail("{}='{}' is not a whole number", name, v);
  const long long n = std::stoll(v);
  if (n < lo || n > hi) fail("{}={} is out of range ({}..{})", name, v, lo, hi);
  return static_cast<int>(n);
}

std::optional<int> int_var(const Env& env, const std::string& name, int lo, int hi) {
  const auto v = var(env, name);
  if (!v) return std::nullopt;
  return to_int(name, *v, lo, hi);
}

constexpr int kMaxRanks = 1 << 24;

int port_var(const Env& env, const std::string& name, int fallback) {
  return int_var(env, name, 1, 65535).value_or(fallback);
}

// The first host of a Slurm hostlist: "gpu[03-05,07],cpu1" -> "gpu03", "rack[1-2]-n[01-04]" -> "rack1-n01".
std::string first_host(const std::string& name, const std::string& list) {
  const auto bad = [&](const char* why) -> std::string { fail("{}='{}' is not a Slurm host list ({})", name, list, why); };
  std::string host;
  int depth = 0;
  size_t i = 0;
  for (; i < list.size(); ++i) {
    const char c = list[i];
    if (c == ',' && depth == 0) break;
    if (c == ']') bad("']' without '['");
    if (c != '[') {
      host += c;
      continue;
    }
    const size_t close = list.find(']', i);
    if (close == std::string::npos) bad("'[' without ']'");
    const std::string inside = list.substr(i + 1, close - i - 1);
    if (inside.find('[') != std::string::npos) bad("nested '['");
    // Every item of the brackets is checked; the first range's start is the first host's part.
    size_t start = 0;
    bool first = true;
    while (true) {
      const size_t comma = inside.find(',', start);
      const std::string item = inside.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const size_t dash = item.find('-');
      const std::string a = item.substr(0, dash), b = dash == std::string::npos ? a : item.substr(dash + 1);
      const auto number = [](const std::string& s) {
        if (s.empty() || s.size() > 9) return false;
        for (char d : s)
          if (d < '0' || d > '9') return false;
        return true;
      };
      if (!number(a) || !number(b)) bad("a bracket holds something other than numbers and ranges");
      if (std::stol(a) > std::stol(b)) bad("a range runs backwards");
      if (first) host += a;
      first = false;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    i = close;
  }
  if (host.empty()) bad("no host before the first ','");
  return host;
}

// Slurm's tasks-per-node list ("4(x2),2") expanded: the count of node `node`.
int tasks_on_node(const std::string& name, const std::string& v, int node) {
  const auto bad = [&]() -> int { fail("{}='{}' is not a Slurm tasks-per-node list such as 4(x2),2", name, v); };
  int seen = 0;
  size_t start = 0;
  while (start <= v.size()) {
    const size_t comma = v.find(',', start);
    const std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::string count = item, times = "1";
    if (const size_t p = item.find("(x"); p != std::string::npos) {
      if (item.back() != ')') return bad();
      count = item.substr(0, p);
      times = item.substr(p + 2, item.size() - p - 3);
    }
    for (const std::string* s : {&count, &times}) {
      if (s->empty() || s->size() > 7) return bad();
      for (char c : *s)
        if (c < '0' || c > '9') return bad();
    }
    seen += std::stoi(times);
    if (node < seen) return std::stoi(count);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  fail("{}='{}' lists {} nodes, too few for SLURM_NODEID={}", name, v, seen, node);
}

bool bool_var(const Env& env, const std::string& name) {
  const auto v = var(env, name);
  if (!v) return false;
  if (*v == "True" || *v == "true" || *v == "1") return true;
  if (*v == "False" || *v == "false" || *v == "0") return false;
  fail("{}='{}' is neither True nor False", name, *v);
}

void from_torch_names(const Env& env, Topology& t) {
  for (const char* need : {"RANK", "WORLD_SIZE"})
    if (!has(env, need))
      fail("{} is not set, but {} is", need, has(env, "RANK") ? "RANK" : has(env, "WORLD_SIZE") ? "WORLD_SIZE" : "LOCAL_RANK");
  t.world = *int_var(env, "WORLD_SIZE", 1, kMaxRanks);
  t.rank = *int_var(env, "RANK", 0, kMaxRanks);
  if (t.rank >= t.world) fail("RANK={} is not below WORLD_SIZE={}", t.rank, t.world);
  const auto local_rank = int_var(env, "LOCAL_RANK", 0, kMaxRanks);
  const auto local_world = int_var(env, "LOCAL_WORLD_SIZE", 1, kMaxRanks);
  if (local_rank && !local_world) fail("LOCAL_RANK={} is set, but LOCAL_WORLD_SIZE is not", *local_rank);
  t.local_rank = local_rank.value_or(0);
  t.local_world = local_world.value_or(1);
  if (t.local_rank >= t.local_world)
    fail("LOCAL_RANK={} is not below LOCAL_WORLD_SIZE={}", t.local_rank, t.local_world);
  if (t.local_world > t.world) fail("LOCAL_WORLD_SIZE={} exceeds WORLD_SIZE={}", t.local_world, t.world);
  if (const auto g = int_var(env, "GROUP_WORLD_SIZE", 1, kMaxRanks)) {
    t.nodes = *g;
    if (t.nodes > t.world) fail("GROUP_WORLD_SIZE={} exceeds WORLD_SIZE={}", t.nodes, t.world);
  } else if (t.world % t.local_world == 0) {
    t.nodes = t.world / t.local_world;
  } else {
    fail("WORLD_SIZE={} is not a multiple of LOCAL_WORLD_SIZE={} (and GROUP_WORLD_SIZE is not set)", t.world,
         t.local_world);
  }
  const auto group_rank = int_var(env, "GROUP_RANK", 0, kMaxRanks);
  t.node_rank = group_rank.value_or(t.rank / t.local_world);
  if (t.node_rank >= t.nodes)
    fail("GROUP_RANK={} is not below the node count {} ({})", t.node_rank, t.nodes,
         has(env, "GROUP_WORLD_SIZE") ? "GROUP_WORLD_SIZE" : "WORLD_SIZE / LOCAL_WORLD_SIZE");
  // Nodes of equal size (always so for ftune's launcher and torchrun with one --nproc-per-node):
  // node n holds ranks n * LOCAL_WORLD_SIZE onwards.
  if (group_rank && local_rank && t.nodes * t.local_world == t.world &&
      t.rank != t.node_rank * t.local_world + t.local_rank)
    fail("RANK={} contradicts GROUP_RANK={}, LOCAL_RANK={} and LOCAL_WORLD_SIZE={} (which make rank {})", t.rank,
         t.node_rank, t.local_rank, t.local_world, t.node_rank * t.local_world + t.local_rank);
  t.master_addr = var(env, "MASTER_ADDR").value_or("127.0.0.1");
  t.master_port = port_var(env, "MASTER_PORT", 29500);
  if (t.nodes > 1 && !has(env, "MASTER_ADDR"))
    fail("MASTER_ADDR is not set, but WORLD_SIZE={} spans {} nodes", t.world, t.nodes);

  if (const auto l = var(env, "FTUNE_LAUNCHER")) {
    if (*l != "ftune") fail("FTUNE_LAUNCHER='{}' is not ftune", *l);
    t.launcher = "ftune";
  } else if (has(env, "TORCHELASTIC_RUN_ID") || has(env, "TORCHELASTIC_RESTART_COUNT") ||
             has(env, "TORCHELASTIC_USE_AGENT_STORE") || has(env, "GROUP_RANK")) {
    t.launcher = "torchrun";
  } else if (has(env, "KUBERNETES_SERVICE_HOST") || has(env, "PET_MASTER_ADDR")) {
    t.launcher = "kubeflow";  // a PyTorchJob pod per rank: RANK is the pod's index
  } else {
    t.launcher = "torchrun";  // the torchrun names, from whoever set them
  }

  if (bool_var(env, "TORCHELASTIC_USE_AGENT_STORE")) {
    for (const char* need : {"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"})
      if (!has(env, need)) fail("TORCHELASTIC_USE_AGENT_STORE=True, but {} is not set", need);
    t.agent_store = true;
    t.store_prefix = fmt::format("/worker/attempt_{}", *int_var(env, "TORCHELASTIC_RESTART_COUNT", 0, 1 << 30));
  }
}

// A PyTorchJob pod started ftune itself: one rank per pod.
void from_kubeflow(const Env& env, Topology& t) {
  t.launcher = "kubeflow";
  const auto nnodes = var(env, "PET_NNODES");
  if (!nnodes) fail("PET_NNODES is not set, but {} is", has(env, "PET_NPROC_PER_NODE") ? "PET_NPROC_PER_NODE" : "PET_NODE_RANK");
  if (const size_t colon = nnodes->find(':'); colon != std::string::npos) {
    const int lo = to_int("PET_NNODES", nnodes->substr(0, colon), 1, kMaxRanks);
    const int hi = to_int("PET_NNODES", nnodes->substr(colon + 1), 1, kMaxRanks);
    if (lo != hi) fail("PET_NNODES={} is an elastic range; ftune needs a fixed node count (or torchrun --no-python)", *nnodes);
    t.nodes = lo;
  } else {
    t.nodes = to_int("PET_NNODES", *nnodes, 1, kMaxRanks);
  }
  if (const auto p = var(env, "PET_NPROC_PER_NODE")) {
    const int nproc = to_int("PET_NPROC_PER_NODE", *p, 1, kMaxRanks);
    if (nproc != 1)
      fail("PET_NPROC_PER_NODE={} asks for {} ranks per pod: start ftune under torchrun --no-python (which reads the "
           "PET_ variables), or set nprocPerNode to 1",
           nproc, nproc);
  }
  const auto node_rank = int_var(env, "PET_NODE_RANK", 0, kMaxRanks);
  const auto pod = int_var(env, "RANK", 0, kMaxRanks);
  if (!node_rank && !pod) fail("PET_NODE_RANK is not set (nor RANK, the pod's index)");
  if (node_rank && pod && *node_rank != *pod) fail("RANK={} (the pod's index) contradicts PET_NODE_RANK={}", *pod, *node_rank);
  t.node_rank = node_rank ? *node_rank : *pod;
  if (t.node_rank >= t.nodes) fail("PET_NODE_RANK={} is not below PET_NNODES={}", t.node_rank, t.nodes);
  t.world = t.nodes;
  t.rank = t.node_rank;
  if (const auto w = int_var(env, "WORLD_SIZE", 1, kMaxRanks); w && *w != t.world)
    fail("WORLD_SIZE={} contradicts PET_NNODES={} with one rank per pod", *w, t.nodes);
  const auto addr = var(env, "PET_MASTER_ADDR") ? var(env, "PET_MASTER_ADDR") : var(env, "MASTER_ADDR");
  if (!addr && t.nodes > 1) fail("PET_MASTER_ADDR is not set (nor MASTER_ADDR), but PET_NNODES={}", t.nodes);
  t.master_addr = addr.value_or("127.0.0.1");
  t.master_port = has(env, "PET_MASTER_PORT") ? port_var(env, "PET_MASTER_PORT", 29500) : port_var(env, "MASTER_PORT", 29500);
}

void from_slurm(const Env& env, Topology& t) {
  t.launcher = "slurm";
  t.rank = *int_var(env, "SLURM_PROCID", 0, kMaxRanks);
  const char* world_var = has(env, "SLURM_NTASKS") ? "SLURM_NTASKS" : "SLURM_NPROCS";
  const auto world = int_var(env, world_var, 1, kMaxRanks);
  if (!world) fail("SLURM_PROCID is set, but SLURM_NTASKS is not");
  t.world = *world;
  if (t.rank >= t.world) fail("SLURM_PROCID={} is not below {}={}", t.rank, world_var, t.world);
  const char* nodes_var = has(env, "SLURM_NNODES") ? "SLURM_NNODES" : "SLURM_JOB_NUM_NODES";
  const auto nodes = int_var(env, nodes_var, 1, kMaxRanks);
  if (!nodes && t.world > 1) fail("{}={}, but SLURM_NNODES is not set", world_var, t.world);
  t.nodes = nodes.value_or(1);
  if (t.nodes > t.world) fail("{}={} exceeds {}={}", nodes_var, t.nodes, world_var, t.world);
  const auto node_rank = int_var(env, "SLURM_NODEID", 0, kMaxRanks);
  if (!node_rank && t.nodes > 1) fail("{}={}, but SLURM_NODEID is not set", nodes_var, t.nodes);
  t.node_rank = node_rank.value_or(0);
  if (t.node_rank >= t.nodes) fail("SLURM_NODEID={} is not below {}={}", t.node_rank, nodes_var, t.nodes);
  const auto local_rank = int_var(env, "SLURM_LOCALID", 0, kMaxRanks);
  if (!local_rank && t.world > 1) fail("{}={}, but SLURM_LOCALID is not set", world_var, t.world);
  t.local_rank = local_rank.value_or(0);
  const char* local_var = nullptr;
  for (const char* name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"})
    if (!local_var && has(env, name)) local_var = name;
  if (local_var) {
    const std::string v = *var(env, local_var);
    t.local_world = std::string(local_var) == "SLURM_NTASKS_PER_NODE" ? to_int(local_var, v, 1, kMaxRanks)
                                                                      : tasks_on_node(local_var, v, t.node_rank);
    if (t.local_world < 1) fail("{}='{}' gives node {} no tasks", local_var, *var(env, local_var), t.node_rank);
  } else if (t.nodes == 1) {
    t.local_world = t.world;
  } else {
    fail("{}={} spans {} nodes, but SLURM_NTASKS_PER_NODE is not set (nor SLURM_TASKS_PER_NODE)", world_var, t.world,
         t.nodes);
  }
  if (t.local_world > t.world) fail("{}={} exceeds {}={}", local_var, t.local_world, world_var, t.world);
  if (t.local_rank >= t.local_world)
    fail("SLURM_LOCALID={} is not below {}={}", t.local_rank, local_var ? local_var : world_var, t.local_world);
  if (const auto addr = var(env, "MASTER_ADDR")) {
    t.master_addr = *addr;
  } else {
    const char* list_var = has(env, "SLURM_NODELIST") ? "SLURM_NODELIST" : "SLURM_JOB_NODELIST";
    if (const auto list = var(env, list_var)) t.master_addr = first_host(list_var, *list);
    else if (t.nodes > 1) fail("{}={}, but neither MASTER_ADDR nor SLURM_NODELIST is set", nodes_var, t.nodes);
  }
  t.master_port = port_var(env, "MASTER_PORT", 29500);
}

}  // namespace

Topology topology_from_env(const std::map<std::string, std::string>& env) {
  Topology t;
  const bool torch_names = has(env, "RANK") || has(env, "WORLD_SIZE") || has(env, "LOCAL_RANK");
  const bool pet = has(env, "PET_NNODES") || has(env, "PET_NPROC_PER_NODE") || has(env, "PET_NODE_RANK");
  if (torch_names && (has(env, "LOCAL_RANK") || !pet)) from_torch_names(env, t);
  else if (pet) from_kubeflow(env, t);
  else if (has(env, "SLURM_PROCID")) from_slurm(env, t);
  return t;
}

Topology topology_from_env() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return topology_from_env(env);
}

}  // namespace ftune::dist
