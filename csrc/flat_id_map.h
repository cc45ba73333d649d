// Open-addressing hash map from request id (int64) to request row (int32).
// Linear probing with backward-shift deletion: no tombstones, no allocation
// after construction, a few nanoseconds per lookup.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace disagmoe {

class FlatIdMap {
 public:
  // Rows are int32: a map never holds more keys than that.
  static constexpr int64_t kMaxSize = INT32_MAX;

  // Slots of a map for up to `max_size` keys: a power of two, at least twice as many.
  static uint64_t capacity_for(int64_t max_size) {
    uint64_t capacity = 16;
    while (capacity < 2 * static_cast<uint64_t>(max_size)) capacity <<= 1;
    return capacity;
  }

  explicit FlatIdMap(int64_t max_size) {
    if (max_size < 0 || max_size > kMaxSize)
      throw std::invalid_argument("FlatIdMap: max_size=" + std::to_string(max_size) +
                                  " must be in [0, " + std::to_string(kMaxSize) + "]");
    uint64_t capacity = capacity_for(max_size);
    int bits = 0;
    while ((uint64_t{1} << bits) < capacity) ++bits;
    shift_ = 64 - bits;
    mask_ = capacity - 1;
    keys_.assign(capacity, 0);
    values_.assign(capacity, kEmpty);
  }

  // The row of `key`, or -1 when it is absent.
  int32_t find(int64_t key) const {
    for (uint64_t i = home(key);; i = (i + 1) & mask_) {
      if (values_[i] == kEmpty) return -1;
      if (keys_[i] == key) return values_[i];
    }
  }

  // `key` must be absent and the map below its maximum size.
  void insert(int64_t key, int32_t value) {
    uint64_t i = home(key);
    while (values_[i] != kEmpty) i = (i + 1) & mask_;
    keys_[i] = key;
    values_[i] = value;
    ++size_;
  }

  // `key` must be present.
  void erase(int64_t key) {
    uint64_t hole = home(key);
    while (keys_[hole] != key || values_[hole] == kEmpty) hole = (hole + 1) & mask_;
    // Shift later members of the probe run back so that no lookup stops early.
    for (uint64_t j = (hole + 1) & mask_; values_[j] != kEmpty; j = (j + 1) & mask_) {
      uint64_t want = home(keys_[j]);
      bool movable = ((j - want) & mask_) >= ((j - hole) & mask_);
      if (movable) {
        keys_[hole] = keys_[j];
        values_[hole] = values_[j];
        hole = j;
      }
    }
    values_[hole] = kEmpty;
    --size_;
  }

  void clear() {
    values_.assign(values_.size(), kEmpty);
    size_ = 0;
  }

  int64_t size() const { return size_; }

 private:
  static constexpr int32_t kEmpty = -1;
  uint64_t home(int64_t key) const {
    return (static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift_;
  }

  int shift_;
  uint64_t mask_;
  int64_t size_ = 0;
  std::vector<int64_t> keys_;
  std::vector<int32_t> values_;
};

}  // namespace disagmoe
