// LossScaler: growth and backoff as torch's GradScaler (_amp_update_scale_).
#include "optim/loss_scaler.h"

namespace ftune {

bool LossScaler::update(bool finite) {
  if (!finite) {
    scale_ *= backoff_;
    clean_ = 0;
    ++skipped_;
    return false;
  }
  if (++clean_ == interval_) {
    scale_ *= growth_;
    clean_ = 0;
  }
  return true;
}

}  // namespace ftune
