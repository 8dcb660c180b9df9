// The Kubernetes manifests of deploy/k8s: they parse, and each pod has what a training pod needs:
// a memory-backed /dev/shm, GPU/CPU/memory/ephemeral-storage requests equal to its limits, a restart
// policy that retries, and a termination grace period longer than ftune's train.grace_s default
// (the checkpoint on SIGTERM must finish before the kubelet's SIGKILL).
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>

#include "recipe/train_config.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
const fs::path kK8s = fs::path(FTUNE_SOURCE_DIR) / "deploy" / "k8s";

// The pod spec of a Job or of a PyTorchJob's Worker replica.
YAML::Node pod_spec(const YAML::Node& doc, std::string& restart) {
  const std::string kind = doc["kind"].as<std::string>();
  if (kind == "Job") {
    restart = doc["spec"]["template"]["spec"]["restartPolicy"].as<std::string>();
    return doc["spec"]["template"]["spec"];
  }
  EXPECT_EQ(kind, "PyTorchJob");
  const YAML::Node w = doc["spec"]["pytorchReplicaSpecs"]["Worker"];
  restart = w["restartPolicy"].as<std::string>();
  return w["template"]["spec"];
}

TEST(Deploy, KubernetesPodsHaveShmResourcesRetriesAndGrace) {
  int files = 0;
  for (const auto& e : fs::directory_iterator(kK8s)) {
    if (e.path().extension() != ".yaml") continue;
    ++files;
    const std::string name = e.path().filename().string();
    const YAML::Node doc = YAML::LoadFile(e.path().string());
    std::string restart;
    const YAML::Node spec = pod_spec(doc, restart);
    EXPECT_TRUE(restart == "OnFailure" || (restart == "Never" && doc["spec"]["backoffLimit"].as<int>() > 0)) << name;
    EXPECT_GT(spec["terminationGracePeriodSeconds"].as<double>(), TrainSettings{}.grace_s) << name;
    bool shm_volume = false;
    for (const YAML::Node& v : spec["volumes"])
      if (v["name"].as<std::string>() == "dshm") shm_volume = v["emptyDir"]["medium"].as<std::string>() == "Memory";
    EXPECT_TRUE(shm_volume) << name << ": /dev/shm must be a memory-backed emptyDir";
    const YAML::Node c = spec["containers"][0];
    bool shm_mount = false;
    for (const YAML::Node& m : c["volumeMounts"]) shm_mount = shm_mount || m["mountPath"].as<std::string>() == "/dev/shm";
    EXPECT_TRUE(shm_mount) << name;
    for (const char* r : {"nvidia.com/gpu", "cpu", "memory", "ephemeral-storage"}) {
      ASSERT_TRUE(c["resources"]["limits"][r]) << name << " " << r;
      EXPECT_EQ(c["resources"]["limits"][r].as<std::string>(), c["resources"]["requests"][r].as<std::string>())
          << name << " " << r;
    }
  }
  EXPECT_EQ(files, 2);
}

}  // namespace
}  // namespace ftune
