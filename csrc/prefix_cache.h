// The prefix cache: which KV blocks hold the content of which prompt blocks (by the
// caller's chained hashes), how many requests hold each, and the least recently used of
// those no request holds (docs/prefix-caching.md). It knows cache entries by an id in
// [0, num_entries): the designs that allocate on the host (cpu, hybrid) use the block id
// itself; one whose blocks live on the device (gpu) keeps the block of each entry there.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flat_id_map.h"

namespace disagmoe {

struct PrefixCacheStats {
  int64_t cached_blocks = 0;     // indexed now
  int64_t evictable_blocks = 0;  // indexed, no holder
  int64_t queried_blocks = 0;    // hashes passed to match_prefix
  int64_t hit_blocks = 0;        // of those, blocks matched
  int64_t evicted_blocks = 0;
};

class PrefixCache {
 public:
  // Throws std::invalid_argument when num_entries is outside [1, INT32_MAX].
  explicit PrefixCache(int64_t num_entries);
  // Host bytes a cache of `num_entries` holds.
  static int64_t host_bytes(int64_t num_entries) {
    return static_cast<int64_t>(sizeof(Entry)) * num_entries +
           12 * static_cast<int64_t>(FlatIdMap::capacity_for(num_entries));
  }

  // Empty: nothing indexed, every counter zero.
  void reset();

  // How many leading hashes of `hashes[0, n)` are indexed now (changes nothing).
  int64_t count_hits(const int64_t* hashes, int64_t n) const;
  // One more holder of each of the entries of hashes[0, m) (all indexed: m <= count_hits);
  // an evictable one leaves the LRU. Their ids into out[0, m).
  void acquire(const int64_t* hashes, int64_t m, int32_t* out);
  // Counts a match_prefix of `queried` hashes that matched `hits`.
  void count_query(int64_t queried, int64_t hits) {
    stats_.queried_blocks += queried;
    stats_.hit_blocks += hits;
  }

  // Indexes `entry` (held by the one request that filled it) under `hash`, unless an
  // entry is indexed under it already: true when it indexed.
  bool insert(int64_t hash, int32_t entry);
  bool indexed(int32_t entry) const { return entries_[entry].indexed; }
  int32_t refs(int32_t entry) const { return entries_[entry].refs; }

  // One holder lets `entry` go. True when the cache keeps it (indexed: with no holder
  // left it becomes evictable, at the LRU's tail); false when it is not indexed (the
  // caller frees it).
  bool release(int32_t entry);

  // The least recently released evictable entry leaves the index; returns its id.
  // num_evictable() must be > 0.
  int32_t evict();

  int64_t num_cached() const { return index_.size(); }
  int64_t num_evictable() const { return evictable_; }
  PrefixCacheStats stats() const;

  // Empty when consistent with `holders` (per entry: the rows that hold it) and
  // `is_free` (per entry: on the free list), else what is wrong.
  std::string check_integrity(const std::vector<int32_t>& holders,
                              const std::vector<int8_t>& is_free) const;

 private:
  struct Entry {
    int64_t hash = 0;
    int32_t refs = 0;
    int32_t prev = -1, next = -1;  // the LRU's links, while evictable
    bool indexed = false;
  };
  void unlink(int32_t entry);

  std::vector<Entry> entries_;
  FlatIdMap index_;                // hash -> entry
  int32_t head_ = -1, tail_ = -1;  // the LRU: head is the oldest
  int64_t evictable_ = 0;
  PrefixCacheStats stats_;
};

}  // namespace disagmoe
