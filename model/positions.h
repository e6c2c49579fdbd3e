// How a stream's tokens are placed for RoPE (DESIGN.md "Positions in an unbounded stream").
#pragma once

#include <cstdint>

namespace mnemo {

enum class PositionPolicy : uint8_t {
  kExact,    // true positions; valid up to the model's max_position_embeddings
  kBounded,  // InfLLM: keys in the local window keep their true distance to the query; every older
             // key (init, memory blocks) sits at one fixed distance just beyond the window. The model
             // never sees a distance larger than the window, however long the stream.
};

}  // namespace mnemo
