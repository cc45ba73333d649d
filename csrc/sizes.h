// Limits of the core's integer types, and size arithmetic that cannot overflow.
// Every failed check throws std::invalid_argument (ValueError in Python) naming the
// operation, the argument and its value.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace disagmoe {

// Rows, lengths, block ids and slots are int32 in the books, the block tables and
// the metadata, so every count and every slot stays at or below this.
constexpr int64_t kMaxInt32 = INT32_MAX;

inline std::string str(int64_t v) { return std::to_string(v); }

// Throws unless lo <= value <= hi.
inline void check_range(const char* op, const char* name, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi)
    throw std::invalid_argument(std::string(op) + ": " + name + "=" + str(value) + " must be in [" +
                                str(lo) + ", " + str(hi) + "]");
}

// a * b, or throws saying that `what` does not fit in int64.
inline int64_t checked_mul(const char* op, const std::string& what, int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_mul_overflow(a, b, &out))
    throw std::invalid_argument(std::string(op) + ": " + what + " (" + str(a) + " x " + str(b) +
                                ") does not fit in int64");
  return out;
}

// a + b, or throws saying that `what` does not fit in int64.
inline int64_t checked_add(const char* op, const std::string& what, int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out))
    throw std::invalid_argument(std::string(op) + ": " + what + " (" + str(a) + " + " + str(b) +
                                ") does not fit in int64");
  return out;
}

// The most bytes one manager's host books (a table, a free list) may take: 64 GiB. A
// size past it is refused by arithmetic, whatever this machine has (one that could not
// hold it must not find out by being killed when the pages are touched).
constexpr int64_t kMaxHostBytes = int64_t{1} << 36;

// Throws unless `bytes` is at most kMaxHostBytes.
void check_host_bytes(const char* op, const std::string& what, int64_t bytes);

}  // namespace disagmoe
