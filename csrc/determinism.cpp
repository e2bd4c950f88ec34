// torch's global determinism switches, which tch does not expose.
// Built by build.rs against the same libtorch headers tch links.
#include <ATen/Context.h>

extern "C" {

// Deterministic algorithms (warn-only: an op without a deterministic
// kernel warns instead of aborting a rerun), deterministic cuDNN, no cuDNN
// autotuning. Returns 0, or 1 when libtorch threw.
int palisweep_set_deterministic(int warn_only) {
  try {
    at::globalContext().setDeterministicAlgorithms(true, warn_only != 0);
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
    return 0;
  } catch (...) {
    return 1;
  }
}

// What libtorch itself reports, so callers record the state, not the wish.
int palisweep_deterministic_algorithms(void) {
  return at::globalContext().deterministicAlgorithms() ? 1 : 0;
}

int palisweep_deterministic_cudnn(void) {
  return at::globalContext().deterministicCuDNN() ? 1 : 0;
}

}
