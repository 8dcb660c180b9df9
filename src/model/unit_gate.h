// Where the CPU model hands control to whoever owns its weights, unit by unit (ZeRO-3 keeps only a
// piece of each unit per rank): the weights of a unit are asked for before it runs and given up
// after, and its weight gradients are opened before its backward and handed over after.
#pragma once
#include <cstdint>

namespace ftune {

// Units, numbered as dist::Zero3Layout numbers them: 0 the embedding, 1 + l decoder layer l's seven
// projections, L + 1 the lm_head (with tied embeddings the embedding again). The RMSNorm weights
// belong to no unit: they stay with the model.
inline constexpr int64_t kEmbedUnit = 0;
inline int64_t layer_unit(int64_t layer) { return 1 + layer; }
inline int64_t head_unit(int64_t layers) { return layers + 1; }

class UnitGate {
 public:
  virtual ~UnitGate() = default;
  // The unit's weight tensors hold its whole weights from gather until release.
  virtual void gather(int64_t unit) = 0;
  virtual void release(int64_t unit) = 0;
  // The unit's gradient tensors exist, zero, from begin_grads; end_grads takes what the backward
  // wrote into them (and may free them).
  virtual void begin_grads(int64_t unit) = 0;
  virtual void end_grads(int64_t unit) = 0;
};

}  // namespace ftune
