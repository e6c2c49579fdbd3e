// CRC32C (Castagnoli), the checksum stored with every KV block on disk.
//
// RocksDB checks its own blocks; this one covers the value itself (key and block bytes), so a value
// that is wrong for any reason — a bit flip that slipped past, a torn write, a value under the wrong
// key — is caught before it is ever served. SSE4.2's crc32 instruction when the CPU has it, a
// slicing-by-8 table otherwise; both give the same result.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mnemo {

// Extends `crc` (0 to start) over `n` bytes; crc32c("123456789") == 0xE3069283.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);
inline uint32_t crc32c(const void* data, size_t n) { return crc32c_extend(0, data, n); }

// The portable table version (tests compare it with the hardware path).
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t n);

}  // namespace mnemo
