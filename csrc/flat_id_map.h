// Open-addressing hash map from request id (int64) to request row (int32).
// Linear probing with backward-shift deletion: no tombstones, no allocation
// after construction, a few nanoseconds per lookup.
//
// Ids are user input: a fixed hash lets a caller pick ids that share one home
// slot and make every lookup walk the whole map. So each map draws a seed at
// construction and a key's bucket is splitmix64's finalizer of key ^ seed: no
// fixed set of ids collides in every map. The seed changes where keys sit, never
// what find, insert and erase return.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
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
    seed_ = new_seed(this);
    keys_.assign(capacity, 0);
    values_.assign(capacity, kEmpty);
  }

  // The row of `key`, or -1 when it is absent.
  int32_t find(int64_t key) const {
    for (uint64_t i = bucket(key);; i = (i + 1) & mask_) {
      if (values_[i] == kEmpty) return -1;
      if (keys_[i] == key) return values_[i];
    }
  }

  // `key` must be absent and the map below its maximum size.
  void insert(int64_t key, int32_t value) {
    uint64_t i = bucket(key);
    while (values_[i] != kEmpty) i = (i + 1) & mask_;
    keys_[i] = key;
    values_[i] = value;
    ++size_;
  }

  // `key` must be present.
  void erase(int64_t key) {
    uint64_t hole = bucket(key);
    while (keys_[hole] != key || values_[hole] == kEmpty) hole = (hole + 1) & mask_;
    // Shift later members of the probe run back so that no lookup stops early.
    for (uint64_t j = (hole + 1) & mask_; values_[j] != kEmpty; j = (j + 1) & mask_) {
      uint64_t want = bucket(keys_[j]);
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

  // The home slot of `key` among bucket_count() slots (as std::unordered_map's).
  uint64_t bucket(int64_t key) const { return mix(static_cast<uint64_t>(key) ^ seed_) >> shift_; }
  uint64_t bucket_count() const { return mask_ + 1; }

 private:
  static constexpr int32_t kEmpty = -1;

  // splitmix64's finalizer: a bijection of 64 bits whose every output bit
  // depends on every input bit.
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // A seed per map: the process's random draw, a count of the maps made and the
  // map's address, mixed.
  static uint64_t new_seed(const void* self) {
    static const uint64_t process = [] {
      try {
        std::random_device device;
        return (static_cast<uint64_t>(device()) << 32) ^ device();
      } catch (const std::exception&) {  // no entropy source: the clock
        return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      }
    }();
    static std::atomic<uint64_t> made{0};
    uint64_t count = made.fetch_add(1, std::memory_order_relaxed);
    return mix(process + count * 0x9E3779B97F4A7C15ull) ^ mix(reinterpret_cast<uintptr_t>(self));
  }

  int shift_;
  uint64_t seed_;
  uint64_t mask_;
  int64_t size_ = 0;
  std::vector<int64_t> keys_;
  std::vector<int32_t> values_;
};

}  // namespace disagmoe
