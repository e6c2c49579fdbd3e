// Workspace: device scratch memory owned by the caller and lent to a launcher for one call.
//
// Launchers never allocate (STYLE.md §3): the caller sizes the buffer once per step with the op's
// `*_workspace_bytes()` and reuses it across layers, so a step can be captured as a CUDA graph.
// No CUDA types here; `data` is a device pointer aligned to at least 256 bytes (cudaMalloc's).
#pragma once

#include <cstddef>

namespace mnemo {

struct Workspace {
  void* data = nullptr;  // device memory, not owned
  size_t bytes = 0;
};

}  // namespace mnemo
