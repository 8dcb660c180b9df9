// The clipping coefficient.
#include "optim/adamw.h"

namespace ftune {

double clip_coefficient(double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  return max_norm > 0 && coef < 1.0 ? coef : 1.0;
}

}  // namespace ftune
