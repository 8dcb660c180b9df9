// A run's memory plan: the device bytes per category that the model allocates up front (every
// buffer of a training step is allocated once, so the plan is the allocation itself), and the
// host memory it pins or holds. Printed by `ftune plan` and checked against measured peaks.
#pragma once
#include <array>
#include <cstddef>
#include <string>

namespace ftune {

enum class MemCategory { Weights, Trainable, Gradients, Optimizer, Activations, Scratch };
inline constexpr int kMemCategories = 6;

// What each category holds, for the printed plan.
inline const char* mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::Weights: return "weights";
    case MemCategory::Trainable: return "trainable";
    case MemCategory::Gradients: return "gradients";
    case MemCategory::Optimizer: return "optimizer";
    case MemCategory::Activations: return "activations";
    case MemCategory::Scratch: return "scratch";
  }
  return "?";
}
inline const char* mem_category_doc(MemCategory c) {
  switch (c) {
    case MemCategory::Weights: return "the model as it computes (bf16/fp16/fp32 or NF4 codes and scales)";
    case MemCategory::Trainable: return "adapter masters (fp32) and their compute copy";
    case MemCategory::Gradients: return "fp32 gradients of what trains";
    case MemCategory::Optimizer: return "master weights (full fine-tuning) and AdamW moments on the device";
    case MemCategory::Activations: return "saved activations, or the checkpointed layer inputs";
    case MemCategory::Scratch: return "per-step buffers: token ids, RoPE tables, logits chunk, backward buffers";
  }
  return "";
}

struct MemoryPlan {
  std::array<size_t, kMemCategories> device{};  // bytes per MemCategory
  size_t host_pinned = 0;                       // page-locked host memory (offloaded inputs, paged states, staging)
  size_t host = 0;                              // ordinary host memory (offloaded masters and moments)
  size_t device_total() const {
    size_t t = 0;
    for (size_t b : device) t += b;
    return t;
  }
  size_t& operator[](MemCategory c) { return device[static_cast<int>(c)]; }
  size_t operator[](MemCategory c) const { return device[static_cast<int>(c)]; }
};

}  // namespace ftune
